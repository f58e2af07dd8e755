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

import json
import os
from pathlib import Path

import numpy as np

from runtime_py.backends import open_program
from runtime_py.bundle import BundleError, load_manifest
from runtime_py.manifest import labels_sha256


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


def _as_texts(texts, what: str = "texts") -> list:
    """A list of str/bytes from a list or tuple; anything else (a generator, a dict, None) is refused."""
    if isinstance(texts, (str, bytes)):
        raise InputError(f"{what} must be a list of strings; for one text use predict_one")
    if not isinstance(texts, (list, tuple)):
        raise InputError(f"{what} is {type(texts).__name__}; pass a list of strings")
    return list(texts)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def word_breaks(tables: dict) -> frozenset:
    """From tokenizer_tables.json: the code points the normaliser makes a space (`space`), and those the
    pre-tokenizer splits at (`whitespace`) that the normaliser keeps (not in `remove`)."""
    def points(key):
        return {cp for a, b in tables[key] for cp in range(a, b + 1)}

    return frozenset(points("space") | (points("whitespace") - points("remove")))


def words(encoding, text: str, breaks: frozenset) -> list:
    """(word index, first token position) of the first text's tokens, grouped as training grouped them:
    a token starts a new word when the original text between the previous token and it holds a word
    break (whitespace). So "U.S." or "O'Brien" is one word, as in the training data (CONTRACT.md)."""
    out, prev_end, w = [], None, -1
    for j, ((a, b), seq) in enumerate(zip(encoding.offsets, encoding.sequence_ids)):
        if seq != 0 or encoding.special_tokens_mask[j]:
            continue
        if prev_end is None or any(ord(c) in breaks for c in text[prev_end:a]):
            w += 1
        out.append((w, j))
        prev_end = b
    return out


def bio_spans(tags: list, extents: list, text: str) -> list:
    """BIO tags, one per word, and each word's [start, end) -> [{label, start, end, text}] as seqeval
    extracts entities: B-X starts a span, I-X continues one of type X or starts one, anything else ends it."""
    out, cur = [], None
    for tag, (start, end) in zip(tags, extents):
        kind = tag[2:] if tag[:2] in ("B-", "I-") else None
        if kind and (tag.startswith("B-") or cur is None or cur["label"] != kind):
            cur = {"label": kind, "start": start, "end": end}
            out.append(cur)
        elif kind:
            cur["end"] = end
        else:
            cur = None
    for span in out:
        span["text"] = text[span["start"]: span["end"]]
    return out


def tag_spans(label_ids, labels, encoding, text: str, breaks: frozenset) -> list:
    """Per-token label ids -> spans: a word's tag is its first token's label."""
    first, extent = {}, {}
    for w, j in words(encoding, text, breaks):
        a, b = encoding.offsets[j]
        first.setdefault(w, j)
        s, e = extent.get(w, (a, b))
        extent[w] = (min(s, a), max(e, b))
    order = sorted(first)
    return bio_spans([labels[label_ids[first[w]]] for w in order], [extent[w] for w in order], text)


def decode(task, out: np.ndarray, encoding, text: str, breaks: frozenset) -> dict:
    """One task's raw output for one input -> label and score, value, or labelled spans."""
    if task.type == "regression":
        return {"value": float(np.asarray(out).reshape(-1)[0])}
    if task.type == "classification":
        probs = softmax(np.asarray(out, dtype=np.float64))
        i = int(probs.argmax())
        return {"label": task.labels[i], "score": float(probs[i])}
    ids = np.asarray(out)[: len(encoding.ids)].argmax(-1).tolist()
    return {"spans": tag_spans(ids, task.labels, encoding, text, breaks)}


def _count(value, what: str, least: int) -> int:
    """An int argument (not a bool, a str or a float) of at least `least`."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)) or value < least:
        raise InputError(f"{what} = {value!r} must be an integer >= {least}, e.g. {what}={max(least, 8)}")
    return int(value)


def pad(encodings, dtype) -> dict:
    """The programs' inputs by name (input_ids, attention_mask, token_type_ids), padded to the longest
    encoding (pad id 0)."""
    n = max(len(e.ids) for e in encodings)
    feeds = {k: np.zeros((len(encodings), n), dtype) for k in ("input_ids", "attention_mask", "token_type_ids")}
    for i, e in enumerate(encodings):
        k = len(e.ids)
        feeds["input_ids"][i, :k] = e.ids
        feeds["attention_mask"][i, :k] = 1
        feeds["token_type_ids"][i, :k] = e.type_ids
    return feeds


class Predictor:
    """Loads a bundle (checking its manifest and checksums) and predicts every task in one trunk pass.

    Safe to call from several threads: the tokenizer is configured once at load and never changed,
    ONNX Runtime sessions are re-entrant and ExecuTorch / CoreML calls are serialised. `threads`: every
    program runs on that many threads (0: the runtime's default; each program's `threads` says what it
    uses); `spin=False`: ONNX Runtime's idle threads do not spin (timing several programs in turn)."""

    def __init__(self, bundle_dir, tasks=None, *, check_files: bool = True, threads: int = 0, spin: bool = True):
        from tokenizers import Tokenizer

        from runtime_py.manifest import tokenizer_fingerprint

        if not isinstance(bundle_dir, (str, os.PathLike)):
            raise InputError(f"bundle_dir is {type(bundle_dir).__name__}; pass the bundle folder's path")
        if not isinstance(check_files, bool):
            raise InputError(f"check_files = {check_files!r} must be True or False")
        threads = _count(threads, "threads", 0)
        if not isinstance(spin, bool):
            raise InputError(f"spin = {spin!r} must be True or False")
        self.dir = Path(bundle_dir)
        self.spec = m = load_manifest(self.dir, check_files)
        self.manifest = m.to_json()
        self.target, self.layout, self.max_seq_len = m.target, m.layout, m.max_seq_len
        all_tasks = {t.name: t for t in m.tasks}
        self.tasks = {n: all_tasks[n] for n in self._check_tasks(tasks, all_tasks)} if tasks else all_tasks
        first = m.program("model" if self.layout == "fused" else "trunk").inputs[0]
        self.max_batch = first.dims[0].max or first.dims[0].size
        self.dtype = np.dtype(first.dtype)
        tok = m.tokenizer
        if tokenizer_fingerprint({k: m.files[getattr(tok, k)]["sha256"] for k in ("file", "vocab", "tables")}) \
                != tok.fingerprint:
            raise BundleError(f"{self.dir}: the tokenizer files do not match manifest field tokenizer/fingerprint "
                              "(tokenizer.json, vocab.txt or tokenizer_tables.json replaced); export the bundle again")
        try:
            self.tokenizer = Tokenizer.from_file(str(self.dir / tok.file))
            self.breaks = word_breaks(json.loads((self.dir / tok.tables).read_text(encoding="utf-8")))
        except Exception as e:  # noqa: BLE001 - any parse failure of a checked file is one bundle error
            raise BundleError(f"{self.dir}: cannot read the tokenizer files ({type(e).__name__}: "
                              f"{str(e)[:120]}); export the bundle again") from None
        cut = (self.tokenizer.truncation or {}).get("max_length")
        if cut is not None and cut != self.max_seq_len:
            raise BundleError(f"{self.dir}: manifest field max_seq_len is {self.max_seq_len}, but {tok.file} "
                              f"truncates at {cut}; export the bundle again")
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=self.max_seq_len)  # as training: longest first
        needed = ["model"] if self.layout == "fused" else ["trunk"] + [t.program for t in self.tasks.values()]
        self.programs = {}
        for name in needed:
            p = m.program(name)
            try:
                prog = open_program(self.target, self.dir / p.file, [i.name for i in p.inputs],
                                    [o.name for o in p.outputs], threads, spin)
            except BundleError:
                raise
            except Exception as e:  # noqa: BLE001 - a file the backend cannot load is a bad bundle
                raise BundleError(f"{self.dir}: {p.file} (manifest field programs/{name}/file) is not a "
                                  f"{self.target} program this runtime can load ({_first_line(e)}); "
                                  "copy or export the bundle again") from None
            self._check_embedded(p, prog)
            self._check_inputs(p, prog)
            self.programs[name] = prog
        self._probe()

    def _check_tasks(self, tasks, known) -> list:
        if isinstance(tasks, (str, bytes)) or not isinstance(tasks, (list, tuple)):
            raise InputError(f"tasks is {type(tasks).__name__}; pass a list of task names")
        odd = [t for t in tasks if not isinstance(t, str)]
        if odd:
            raise InputError(f"tasks holds {type(odd[0]).__name__} {odd[0]!r}; pass task names (str), "
                             f"e.g. tasks=[{next(iter(known), 'name')!r}]")
        unknown = [t for t in tasks if t not in known]
        if unknown:
            raise InputError(f"unknown task {unknown[0]!r}; this bundle has: {', '.join(known)}")
        return list(tasks)

    def _check_embedded(self, program, prog) -> None:
        """The program's own metadata must name this trunk, this tokenizer and the manifest's output order
        (a split branch swapped in from another bundle, a tokenizer swapped with its checksum updated)."""
        try:
            meta = prog.metadata()
        except Exception as e:  # noqa: BLE001 - unreadable metadata is a bad program
            raise BundleError(f"{program.file}: cannot read its embedded metadata ({type(e).__name__}); "
                              "export the bundle again") from None
        if not isinstance(meta, dict):
            raise BundleError(f"{program.file}: its embedded metadata is not a JSON object; export the bundle again")
        m = self.spec
        for key, want in (("trunk_fingerprint", m.trunk_fingerprint), ("tokenizer_fingerprint", m.tokenizer.fingerprint)):
            if meta.get(key) != want:
                what = key.split('_')[0]
                raise BundleError(f"{program.file} was exported for {what} {str(meta.get(key))[:16]}, "
                                  f"this bundle's {what} is {want[:16]}; export the program against this bundle")
        names = [o.name for o in program.outputs]
        if meta.get("outputs") != names:
            raise BundleError(f"{program.file} returns outputs {meta.get('outputs')}, manifest field "
                              f"programs/{program.name}/outputs lists {names}; export the bundle again")
        # The labels are not in the program: their hash is, so an edited label in manifest.json is caught.
        labels = {t.name: list(t.labels) for t in m.tasks}
        served = {o.task: labels.get(o.task, []) for o in program.outputs if o.task is not None}
        if "labels_sha256" not in meta:
            raise BundleError(f"{program.file} carries no labels_sha256 in its embedded metadata (exported by "
                              "an older ctb-mobile), so the manifest's labels cannot be checked; export the bundle "
                              "again")
        if meta["labels_sha256"] != labels_sha256(served):
            raise BundleError(f"manifest field tasks/*/labels of {', '.join(served)} differs from the labels "
                              f"{program.file} was exported with (its labels_sha256); export the bundle again")

    def _check_inputs(self, program, prog) -> None:
        """The manifest's input dtypes are the program's own, where the backend says (ONNX Runtime)."""
        types = getattr(prog, "input_types", lambda: {})()
        for i, t in enumerate(program.inputs):
            got = types.get(t.name)
            if got is not None and got != t.dtype:
                raise BundleError(f"manifest field programs/{program.name}/inputs/{i}/dtype says {t.dtype}, "
                                  f"{program.file} takes {got} for {t.name}; export the bundle again")

    def _probe(self) -> None:
        """Run `[CLS] [SEP]` once and check every output's rank and fixed sizes against the manifest."""
        enc = self.tokenizer.encode("")
        feeds = pad([enc], self.dtype)
        for name, prog in self.programs.items():
            p = self.spec.program(name)
            if name.startswith("branch_"):
                hidden = self._hidden_probe[f"hidden_{self.tasks[p.outputs[0].task].attach}"]
                got = self._call(name, {"hidden": hidden, "attention_mask": feeds["attention_mask"]})
            else:
                got = self._call(name, feeds)
            if len(got) != len(p.outputs):
                raise BundleError(f"{p.file} returns {len(got)} outputs, manifest field programs/{name}/outputs "
                                  f"lists {len(p.outputs)}; export the bundle again")
            sizes = {"batch": 1, "seq": len(enc.ids)}
            for o, arr in zip(p.outputs, got):
                want = tuple(d.size if d.size is not None else sizes.get(d.name, -1) for d in o.dims)
                if tuple(np.shape(arr)) != want:
                    raise BundleError(f"{p.file}: output {o.index} has shape {list(np.shape(arr))}, manifest field "
                                      f"programs/{name}/outputs/{o.index} ({o.name}) says {o.shape_str()}; "
                                      "its outputs are not in the manifest's order or shape; export the bundle again")
            if name == "trunk":
                self._hidden_probe = {o.name: arr for o, arr in zip(p.outputs, got)}

    def _call(self, name: str, feeds: dict) -> list:
        """A program's outputs; a backend failure (the program and its manifest disagree) is a BundleError."""
        try:
            return self.programs[name].run(feeds)
        except Exception as e:  # noqa: BLE001 - inputs were checked against the manifest before this call
            shapes = ", ".join(f"{k} {list(np.shape(v))}" for k, v in feeds.items())
            raise BundleError(f"{self.dir}: program {name} failed on inputs {shapes} that its manifest field "
                              f"programs/{name}/inputs allows ({_first_line(e)}); export the bundle again") from None

    # ---------------------------------------------------------------------------------------------

    def encode(self, texts, pairs=None, tasks=None) -> list:
        """`tokenizers` Encodings, exactly as training encoded its text (truncated to max_seq_len)."""
        texts = [_as_text(t, i) for i, t in enumerate(_as_texts(texts))]
        chosen = self._check_tasks(tasks, self.tasks) if tasks is not None else list(self.tasks)
        if pairs is not None:
            pairs = [_as_text(t, i, "pair") for i, t in enumerate(_as_texts(pairs, "pairs"))]
            if len(pairs) != len(texts):
                raise InputError(f"{len(texts)} texts but {len(pairs)} pairs; give one pair per text")
            single = [n for n in chosen if not self.tasks[n].pair]
            if single:
                raise InputError(f"task {single[0]!r} takes one text, but pairs were given; "
                                 "pass tasks=[...] naming only pair tasks")
            return self.tokenizer.encode_batch(list(zip(texts, pairs))) if texts else []
        paired = [n for n in chosen if self.tasks[n].pair]
        if paired:
            raise InputError(f"task {paired[0]!r} takes a text pair; pass pairs=[...] (and tasks=[...] naming "
                             "only pair tasks)")
        return self.tokenizer.encode_batch(texts) if texts else []

    def run(self, *, input_ids, attention_mask, token_type_ids, tasks=None) -> dict:
        """Raw outputs for one padded batch: task -> array (batch, ...), mapped by the manifest's output order."""
        feeds = self._check_feeds(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        names = self._check_tasks(tasks, self.tasks) if tasks is not None else list(self.tasks)
        if self.layout == "fused":
            out = dict(zip((o.name for o in self.spec.program("model").outputs), self._call("model", feeds)))
            return {n: out[self.tasks[n].output] for n in names}
        hidden = dict(zip((o.name for o in self.spec.program("trunk").outputs), self._call("trunk", feeds)))
        return {n: self._call(self.tasks[n].program, {"hidden": hidden[f"hidden_{self.tasks[n].attach}"],
                                                      "attention_mask": feeds["attention_mask"]})[0]
                for n in names}

    def _check_feeds(self, **feeds) -> dict:
        """run()'s arrays: integer, two-dimensional, one shape, within the program's batch and length."""
        first = self.spec.program("model" if self.layout == "fused" else "trunk").inputs[0]
        shape = None
        for name, a in feeds.items():
            if not isinstance(a, np.ndarray):
                raise InputError(f"{name} is {type(a).__name__}; pass a numpy array (batch, seq) of token ids")
            if a.dtype.kind not in "iu":
                raise InputError(f"{name} has dtype {a.dtype}; pass integer token ids (dtype {self.dtype})")
            if a.ndim != 2 or (shape is not None and a.shape != shape):
                raise InputError(f"{name} has shape {list(a.shape)}; all three inputs are (batch, seq) of one shape")
            shape = a.shape
        for axis, (dim, n) in enumerate(zip(first.dims, shape)):
            if not dim.accepts(n):
                raise InputError(f"inputs have {('batch', 'seq')[axis]} {n}; this bundle takes {dim}")
        return {k: v.astype(self.dtype, copy=False) for k, v in feeds.items()}

    def raw(self, texts, pairs=None, tasks=None, batch_size: int = 16):
        """(encodings, per input dict task -> raw output without padding)."""
        batch_size = _count(batch_size, "batch_size", 1)
        encs = self.encode(texts, pairs, tasks)
        names = list(tasks or self.tasks)
        rows = [None] * len(encs)
        order = sorted(range(len(encs)), key=lambda i: len(encs[i].ids))  # similar lengths share a batch
        step = max(1, min(batch_size, self.max_batch))
        for s in range(0, len(order), step):
            idx = order[s: s + step]
            out = self.run(**pad([encs[i] for i in idx], self.dtype), tasks=names)
            for r, i in enumerate(idx):
                n = len(encs[i].ids)
                rows[i] = {k: (v[r][:n] if v.ndim == 3 else v[r]) for k, v in out.items()}
        return encs, rows

    def decode(self, task: str, out, encoding, text: str) -> dict:
        return decode(self.tasks[task], out, encoding, text, self.breaks)

    def predict(self, texts, pairs=None, tasks=None, batch_size: int = 16) -> list:
        """One dict per input: task -> {"label", "score"} | {"value"} | {"spans": [...]}."""
        texts = _as_texts(texts)
        batch_size = _count(batch_size, "batch_size", 1)
        encs, rows = self.raw(texts, pairs, tasks, batch_size)
        texts = [_as_text(t, i) for i, t in enumerate(texts)]
        return [{n: self.decode(n, row[n], e, t) for n in row} for e, row, t in zip(encs, rows, texts)]

    def predict_one(self, text, pair=None, tasks=None) -> dict:
        return self.predict([text], None if pair is None else [pair], tasks)[0]


def _first_line(e: Exception) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:160]}"
