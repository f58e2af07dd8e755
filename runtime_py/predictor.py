"""The multi-task predictor: tokenize as training did, run the trunk once, decode every task.

    from runtime_py import Predictor
    p = Predictor("models/assistant/bundles/onnx-fused-int8")
    p.predict(["wake me up at 7 am"])   # [{"snips_intent": {"label": ..., "score": ...}, "snips_slots": {"spans": [...]}, ...}]

Input rules (each breaks with a one-line `InputError`, never a crash): texts are `str` (or UTF-8
`bytes`); text longer than the bundle's max_seq_len tokens is truncated (pairs: longest first);
the empty string is a valid input ([CLS] [SEP]); control characters are dropped by the tokenizer's
normaliser as in training; pairs go to pair tasks only, and pair tasks need pairs; unknown task
names are errors.
"""

from pathlib import Path

import numpy as np

from runtime_py.backends import open_program
from runtime_py.bundle import BundleError, read_manifest


class InputError(ValueError):
    """Bad input to the predictor (one line)."""


def _as_text(value, i: int, what: str = "text") -> str:
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"{what} {i} is not valid UTF-8 (byte {e.start}); decode it before calling predict") from None
    if not isinstance(value, str):
        raise InputError(f"{what} {i} is {type(value).__name__}, not str; pass strings")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(f"{what} {i} has an unpaired surrogate at position {e.start}; pass valid Unicode") from None
    return value


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def spans(tags_by_word: dict, encoding, text: str) -> list:
    """BIO tags (one per word) -> [{label, start, end, text}] with character offsets into `text`."""
    word_chars = {}
    for w, (a, b), seq in zip(encoding.word_ids, encoding.offsets, encoding.sequence_ids):
        if w is not None and seq == 0:  # spans are over the first text only
            s, e = word_chars.get(w, (a, b))
            word_chars[w] = (min(s, a), max(e, b))
    out, cur = [], None
    for w in sorted(word_chars):
        tag = tags_by_word.get(w, "O")
        kind = tag[2:] if tag[:2] in ("B-", "I-") else None
        if kind and (tag.startswith("B-") or cur is None or cur["label"] != kind):
            cur = {"label": kind, "start": word_chars[w][0], "end": word_chars[w][1]}
            out.append(cur)
        elif kind:
            cur["end"] = word_chars[w][1]
        else:
            cur = None
    for s in out:
        s["text"] = text[s["start"]: s["end"]]
    return out


def decode(task: dict, out: np.ndarray, encoding, text: str) -> dict:
    """One task's raw output for one input -> label and score, value, or labelled spans."""
    if task["type"] == "regression":
        return {"value": float(out)}
    if task["type"] == "classification":
        probs = softmax(np.asarray(out, dtype=np.float64))
        i = int(probs.argmax())
        return {"label": task["labels"][i], "score": float(probs[i])}
    ids = np.asarray(out)[: len(encoding.ids)].argmax(-1).tolist()
    tags, seen = {}, set()
    for j, (w, seq) in enumerate(zip(encoding.word_ids, encoding.sequence_ids)):
        if w is not None and seq == 0 and w not in seen:  # a word's tag is its first piece's
            seen.add(w)
            tags[w] = task["labels"][ids[j]]
    return {"spans": spans(tags, encoding, text)}


def pad(encodings, dtype) -> tuple:
    """input_ids, attention_mask, token_type_ids padded to the longest encoding (pad id 0)."""
    n = max(len(e.ids) for e in encodings)
    ids, mask, tt = (np.zeros((len(encodings), n), dtype) for _ in range(3))
    for i, e in enumerate(encodings):
        k = len(e.ids)
        ids[i, :k], mask[i, :k], tt[i, :k] = e.ids, 1, e.type_ids
    return ids, mask, tt


class Predictor:
    """Loads a bundle (checking its manifest and checksums) and predicts every task in one trunk pass.

    Safe to call from several threads: the tokenizer is configured once at load and never changed,
    ONNX Runtime sessions are re-entrant and ExecuTorch / CoreML calls are serialised per program."""

    def __init__(self, bundle_dir, tasks=None, check_files: bool = True, threads: int = 0):
        from tokenizers import Tokenizer

        self.dir = Path(bundle_dir)
        self.manifest = m = read_manifest(self.dir, check_files)
        self.target, self.layout, self.max_seq_len = m["target"], m["layout"], int(m["max_seq_len"])
        all_tasks = {t["name"]: t for t in m["tasks"]}
        self.tasks = {n: all_tasks[n] for n in self._check_tasks(tasks, all_tasks)} if tasks else all_tasks
        dims = m["inputs"][0]["dims"]
        self.max_batch = int(dims[0]["max"])
        self.dtype = np.dtype(m["inputs"][0]["dtype"])
        self.tokenizer = Tokenizer.from_file(str(self.dir / m["tokenizer"]["file"]))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=self.max_seq_len)  # as training: longest first
        self._programs = programs = {p["name"]: p for p in m["programs"]}
        needed = ["model"] if self.layout == "fused" else ["trunk"] + [t["program"] for t in self.tasks.values()]
        self.programs = {}
        for name in needed:
            p = programs[name]
            prog = open_program(self.target, self.dir / p["file"], p["inputs"], p["outputs"], threads)
            self.programs[name] = prog
            self._check_embedded(p, prog)

    def _check_tasks(self, tasks, known) -> list:
        unknown = [t for t in tasks if t not in known]
        if unknown:
            raise InputError(f"unknown task {unknown[0]!r}; this bundle has: {', '.join(known)}")
        return list(tasks)

    def _check_embedded(self, program: dict, prog) -> None:
        """A program must come from this trunk (split: a branch file swapped in from another bundle)."""
        meta = prog.metadata()
        if meta and meta.get("trunk_fingerprint") != self.manifest["trunk_fingerprint"]:
            raise BundleError(f"{program['file']} was exported for trunk {str(meta.get('trunk_fingerprint'))[:16]}, "
                              f"this bundle's trunk is {self.manifest['trunk_fingerprint'][:16]}; export the branch "
                              "against this trunk")

    # ---------------------------------------------------------------------------------------------

    def encode(self, texts, pairs=None, tasks=None) -> list:
        """`tokenizers` Encodings, exactly as training encoded its text (truncated to max_seq_len)."""
        if isinstance(texts, (str, bytes)):
            raise InputError("texts must be a list of strings; for one text use predict_one")
        texts = [_as_text(t, i) for i, t in enumerate(texts)]
        chosen = self._check_tasks(tasks, self.tasks) if tasks else list(self.tasks)
        if pairs is not None:
            pairs = [_as_text(t, i, "pair") for i, t in enumerate(pairs)]
            if len(pairs) != len(texts):
                raise InputError(f"{len(texts)} texts but {len(pairs)} pairs; give one pair per text")
            single = [n for n in chosen if not self.tasks[n].get("pair")]
            if single:
                raise InputError(f"task {single[0]!r} takes one text, but pairs were given; "
                                 "pass tasks=[...] naming only pair tasks")
            return self.tokenizer.encode_batch(list(zip(texts, pairs)))
        paired = [n for n in chosen if self.tasks[n].get("pair")]
        if paired:
            raise InputError(f"task {paired[0]!r} takes a text pair; pass pairs=[...] (and tasks=[...] naming "
                             "only pair tasks)")
        return self.tokenizer.encode_batch(texts)

    def run(self, input_ids, attention_mask, token_type_ids, tasks=None) -> dict:
        """Raw outputs for one padded batch: task -> array (batch, ...) in the bundle's order."""
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        names = list(tasks or self.tasks)
        if self.layout == "fused":
            out = dict(zip(self._programs["model"]["outputs"], self.programs["model"].run(feeds)))
            return {n: out[n] for n in names}
        hidden = dict(zip(self._programs["trunk"]["outputs"], self.programs["trunk"].run(feeds)))
        return {n: self.programs[self.tasks[n]["program"]].run(
            {"hidden": hidden[f"hidden_{self.tasks[n]['attach']}"], "attention_mask": attention_mask})[0]
            for n in names}

    def raw(self, texts, pairs=None, tasks=None, batch_size: int = 16):
        """(encodings, per input dict task -> raw output without padding)."""
        encs = self.encode(texts, pairs, tasks)
        names = list(tasks or self.tasks)
        rows = [None] * len(encs)
        order = sorted(range(len(encs)), key=lambda i: len(encs[i].ids))  # similar lengths share a batch
        step = max(1, min(batch_size, self.max_batch))
        for s in range(0, len(order), step):
            idx = order[s: s + step]
            out = self.run(*pad([encs[i] for i in idx], self.dtype), tasks=names)
            for r, i in enumerate(idx):
                n = len(encs[i].ids)
                rows[i] = {k: (v[r][:n] if v.ndim == 3 else v[r]) for k, v in out.items()}
        return encs, rows

    def predict(self, texts, pairs=None, tasks=None, batch_size: int = 16) -> list:
        """One dict per input: task -> {"label", "score"} | {"value"} | {"spans": [...]}."""
        encs, rows = self.raw(texts, pairs, tasks, batch_size)
        texts = [_as_text(t, i) for i, t in enumerate(texts)]
        return [{n: decode(self.tasks[n], row[n], e, t) for n in row} for e, row, t in zip(encs, rows, texts)]

    def predict_one(self, text, pair=None, tasks=None) -> dict:
        return self.predict([text], None if pair is None else [pair], tasks)[0]
