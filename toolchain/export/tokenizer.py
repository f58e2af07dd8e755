"""The bundle's tokenizer files (CONTRACT.md, "Tokenization").

- `tokenizer.json`: the store's tokenizer configured exactly as the bundle tokenizes: truncation at
  max_seq_len, longest first for pairs, no padding (the backbone's file pads to 128).
- `vocab.txt`: the WordPiece vocabulary, id = line number.
- `tokenizer_tables.json`: what the normaliser and the pre-tokenizer do with each code point, read
  off Hugging Face `tokenizers` itself by probing every code point, so that apps never rely on
  their platform's (often older) Unicode tables.
"""

import json
from pathlib import Path

from toolchain import UserError

TABLES_SCHEMA = 1
MAX_CODE_POINT = 0x10FFFF


def bundle_tokenizer(tok, max_seq_len: int):
    """A copy of `tok` that truncates at max_seq_len (longest first) and does not pad."""
    from tokenizers import Tokenizer

    out = Tokenizer.from_str(tok.to_str())
    out.no_padding()
    out.enable_truncation(max_length=max_seq_len, strategy="longest_first")
    return out


def check_wordpiece(tok) -> dict:
    """The tokenizer.json parts the app cores implement; anything else is refused in one line. One rule for
    the exporter and both apps: a WordPiece model, BERT's normaliser and pre-tokenizer, and a
    TemplateProcessing post-processor (a BertProcessing one is refused: the apps read templates only)."""
    cfg = json.loads(tok.to_str())
    model, norm, pre = cfg.get("model") or {}, cfg.get("normalizer") or {}, cfg.get("pre_tokenizer") or {}
    post = cfg.get("post_processor") or {}
    problems = [f"{part} {cfg_part.get('type')}" for part, cfg_part, ok in (
        ("model", model, model.get("type") == "WordPiece"),
        ("normalizer", norm, not norm or norm.get("type") == "BertNormalizer"),
        ("pre_tokenizer", pre, pre.get("type") == "BertPreTokenizer"),
        ("post_processor", post, post.get("type") == "TemplateProcessing")) if not ok]
    if problems:
        raise UserError(f"the bundle tokenizer must be BERT WordPiece for the app cores; this one has "
                        f"{', '.join(problems)}; use a BERT-family backbone with a WordPiece tokenizer")
    return cfg


def _ranges(points: list) -> list:
    out = []
    for cp in points:
        if out and out[-1][1] == cp - 1:
            out[-1][1] = cp
        else:
            out.append([cp, cp])
    return out


SENTINEL = "\u2603"  # a code point every normaliser step leaves alone; separates probes in one call
CHUNK = 4096


def _normalized(norm, chars: list) -> list:
    """What the normaliser makes of each code point, probed in chunks (one call per chunk)."""
    if norm is None:
        return list(chars)
    out = []
    for i in range(0, len(chars), CHUNK):
        chunk = chars[i: i + CHUNK]
        parts = norm.normalize_str(SENTINEL + SENTINEL.join(chunk) + SENTINEL).split(SENTINEL)[1:-1]
        out += parts if len(parts) == len(chunk) else [norm.normalize_str(c) for c in chunk]
    return out


def _split_kinds(pre, chars: list) -> list:
    """Per code point: "whitespace" (the pre-tokenizer splits there and drops it), "punctuation" (it
    becomes a word of its own) or None, probed as "a<c>a<c>a..." in chunks."""
    out = []
    for i in range(0, len(chars), CHUNK):
        chunk = chars[i: i + CHUNK]
        pieces = {tuple(span) for _, span in pre.pre_tokenize_str("a" + "a".join(chunk) + "a")}
        covered = {i for a, b in pieces for i in range(a, b)}
        for k in range(len(chunk)):
            pos = 2 * k + 1  # offsets count code points; each probe is one
            out.append("whitespace" if pos not in covered else "punctuation" if (pos, pos + 1) in pieces else None)
    return out


def tables(tok) -> dict:
    """tokenizer_tables.json for `tok` (see the module docstring and CONTRACT.md)."""
    import tokenizers

    cfg = check_wordpiece(tok)
    points = [cp for cp in range(MAX_CODE_POINT + 1) if not 0xD800 <= cp <= 0xDFFF]  # surrogates are not text
    chars = [chr(cp) for cp in points]
    remove, space, pad, mapping = [], [], [], {}
    for cp, c, n in zip(points, chars, _normalized(tok.normalizer, chars)):
        if n == c:
            continue
        if n == "":
            remove.append(cp)
        elif n == " ":
            space.append(cp)
        elif n == f" {c} ":
            pad.append(cp)
        else:
            mapping[str(cp)] = [ord(x) for x in n]
    kinds = _split_kinds(tok.pre_tokenizer, chars)
    n = cfg.get("normalizer") or {}
    lowercase = bool(n.get("lowercase", False))
    strip = n.get("strip_accents")
    return {"schema_version": TABLES_SCHEMA, "tokenizers_version": tokenizers.__version__,
            "normalizer": {"lowercase": lowercase, "strip_accents": lowercase if strip is None else bool(strip),
                           "clean_text": bool(n.get("clean_text", False)),
                           "handle_chinese_chars": bool(n.get("handle_chinese_chars", False))},
            "remove": _ranges(remove), "space": _ranges(space), "pad": _ranges(pad), "map": mapping,
            "whitespace": _ranges([cp for cp, k in zip(points, kinds) if k == "whitespace"]),
            "punctuation": _ranges([cp for cp, k in zip(points, kinds) if k == "punctuation"])}


def cached_tables(tok) -> str:
    """tables(tok) as JSON text, cached per tokenizers version and normaliser / pre-tokenizer config
    (probing every code point takes seconds; the result depends on nothing else)."""
    import hashlib

    import tokenizers

    from toolchain.backbone import cache_root
    from toolchain.fsutil import write_text_atomic

    cfg = json.loads(tok.to_str())
    key = hashlib.sha256(json.dumps([tokenizers.__version__, TABLES_SCHEMA, cfg.get("normalizer"),
                                     cfg.get("pre_tokenizer")], sort_keys=True).encode()).hexdigest()[:32]
    path = cache_root() / "tokenizer-tables" / f"{key}.json"
    if path.is_file():
        return path.read_text(encoding="utf-8")
    text = json.dumps(tables(tok), separators=(",", ":")) + "\n"
    write_text_atomic(path, text)
    return text


def breaks_of(tok) -> frozenset:
    """word_breaks(tables(tok)) without probing every code point: only the code points that can be
    whitespace (Unicode separators and controls) can become a space or be split at."""
    import unicodedata

    candidates = [chr(cp) for cp in range(0x3100) if unicodedata.category(chr(cp))[0] in "ZC" or chr(cp).isspace()]
    norm = _normalized(tok.normalizer, candidates)
    kinds = _split_kinds(tok.pre_tokenizer, candidates)
    return frozenset(ord(c) for c, n, k in zip(candidates, norm, kinds) if (n == " " != c) or (k == "whitespace" and n))


def vocab_txt(tok) -> str:
    """vocab.txt, the apps' one source of the vocabulary (id = line number), written from the WordPiece
    model's own vocabulary so that the two cannot differ; a vocabulary that a line-per-token file cannot
    hold (ids with gaps, a token with a line break or trailing whitespace) is refused."""
    words = sorted(tok.get_vocab(with_added_tokens=False).items(), key=lambda kv: kv[1])
    gap = next((i for i, (_, j) in enumerate(words) if i != j), None)
    if gap is not None:
        raise UserError(f"the WordPiece vocabulary has no token with id {gap}; the apps read vocab.txt by line "
                        "number, so ids must run 0..n-1: fix the backbone's tokenizer")
    bad = next((w for w, _ in words if not w or w != w.rstrip() or "\n" in w or "\r" in w), None)
    if bad is not None:
        raise UserError(f"vocabulary token {bad!r} cannot be one line of vocab.txt (empty, a line break or trailing "
                        "whitespace); fix the backbone's tokenizer")
    return "".join(w + "\n" for w, _ in words)


def write(tok, src_dir: Path, out_dir: Path, max_seq_len: int) -> dict:
    """Write the three tokenizer files into `out_dir`; returns {"file", "vocab", "tables"} -> file name,
    plus "fingerprint". `src_dir` is the store's tokenizer folder."""
    from runtime_py.bundle import file_sha256
    from runtime_py.manifest import tokenizer_fingerprint

    out_dir = Path(out_dir)
    btok = bundle_tokenizer(tok, max_seq_len)
    check_wordpiece(btok)
    btok.save(str(out_dir / "tokenizer.json"))
    (out_dir / "vocab.txt").write_text(vocab_txt(btok), encoding="utf-8")
    (out_dir / "tokenizer_tables.json").write_text(cached_tables(btok))
    names = {"file": "tokenizer.json", "vocab": "vocab.txt", "tables": "tokenizer_tables.json"}
    digests = {k: file_sha256(out_dir / v) for k, v in names.items()}
    return {**names, "fingerprint": tokenizer_fingerprint(digests)}
