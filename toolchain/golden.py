"""Golden files for the app cores, made from a bundle's own tokenizer (CONTRACT.md, "Golden files").

- golden_tokenizer.json: at least 2,000 texts and pairs with their ids, type ids, code point offsets
  and sequence ids from Hugging Face `tokenizers`: every dev text of the shipped datasets, then
  edge cases by group (accents NFC/NFD, scripts, emoji, control and format characters, special
  tokens typed in the text, over-long words, whitespace, truncation, pairs) and seeded random code
  points.
- golden_spans.json: the hand-written known-answer cases of `span_cases.json`, tokenized by the
  bundle, with one label id per token; each case is decoded by runtime_py and must give its
  expected spans before the file is written.
"""

import json
import random
import unicodedata
from pathlib import Path

from toolchain import UserError

GOLDEN_FORMAT = 1
DATA = Path(__file__).resolve().parent.parent / "models" / "data"
SPAN_CASES = Path(__file__).with_name("span_cases.json")
MIN_TEXTS = 2000


def shipped_dev_texts() -> list:
    """(group, text) for the dev texts of every dataset the project ships (SNIPS valid, CLINC150 val)."""
    out = []
    snips = DATA / "snips" / "valid" / "seq.in"
    if snips.is_file():
        out += [("snips_dev", line.strip()) for line in snips.read_text(encoding="utf-8").splitlines() if line.strip()]
    clinc = DATA / "clinc150" / "data_full.json"
    if clinc.is_file():
        d = json.loads(clinc.read_text(encoding="utf-8"))
        out += [("clinc150_dev", text) for split in ("val", "oos_val") for text, _ in d.get(split, [])]
    return out


def edge_texts() -> list:
    """(group, text) edge cases an app's tokenizer gets wrong first."""
    nfc = ["café crème brûlée", "Ångström naïve façade", "São Paulo, Zürich, Kraków, Reykjavík", "résumé ÉCOLE Œuvre",
           "Dvořák Škoda Łódź", "İstanbul ığdır ŞEHİR", "Straße GROẞ", "Ελληνικά ΟΔΟΣ σοφός", "Привет, Мир! Ёлка",
           "Tiếng Việt có dấu", "ﬁnance ﬂight", "ＡＢＣ　ｆｕｌｌ　ｗｉｄｔｈ", "𝐁𝐨𝐥𝐝 𝑖𝑡𝑎𝑙𝑖𝑐", "Ⅻ ① ㎞ ™"]
    out = [("accents_nfc", t) for t in nfc]
    out += [("accents_nfd", unicodedata.normalize("NFD", t)) for t in nfc]
    out += [("accents_nfkd", unicodedata.normalize("NFKD", t)) for t in nfc[:6]]
    scripts = {"cjk": ["我想订一张去北京的机票", "東京タワーに行きたい", "日本語とEnglishの混在テキスト", "한국어 문장입니다",
                       "中文，标点。符号！", "𠀀𠀁 extension B", "ｶﾀｶﾅ半角"],
               "thai": ["ฉันอยากฟังเพลง", "สวัสดีครับ ยินดีต้อนรับ"],
               "arabic": ["أريد حجز طاولة لشخصين", "مرحبا بالعالم ١٢٣", "السَّلَامُ عَلَيْكُمْ"],
               "hebrew": ["שלום עולם", "אני רוצה לשמוע מוזיקה", "בְּרֵאשִׁית"],
               "other_scripts": ["नमस्ते दुनिया", "வணக்கம்", "Γειά σου", "ជំរាបសួរ", "ᐊᐃᐅ", "ሰላም", "Ողջույն"]}
    for group, texts in scripts.items():
        out += [(group, t) for t in texts]
    emoji = ["play music 🎵🎶", "I love it ❤️", "thumbs 👍🏽 up", "family 👨‍👩‍👧‍👦 trip", "rainbow flag 🏳️‍🌈",
             "melting 🫠 face", "shaking 🫨 head", "pink heart 🩷", "phoenix 🐦‍🔥 rising", "nodding 🙂‍↕️ yes",
             "flags 🇫🇷🇯🇵", "keycap 1️⃣ #️⃣", "😀😃😄😁😆😅🤣😂", "emoji🎉glued", "🧑🏿‍🚀 astronaut"]
    out += [("emoji", t) for t in emoji]
    controls = ["play\x00jazz", "nul \x00 between", "bell\x07 and \x1b escape", "replacement \ufffd char", "\ufffd",
                "zero\u200bwidth space", "zero\u200cwidth\u200djoiner", "soft\u00adhyphen", "bom\ufeffinside",
                "left\u200fto\u200eright", "\u202ebidi override\u202c", "del\x7fete", "c1\x85next\x9fline",
                "private \ue000 use", "unassigned \u0378 \U000e0001 tag", "noncharacter \uffff", "vs16 ✈\ufe0f plane",
                "combining alone \u0301\u0302", "\x01\x02\x03", "form\x0cfeed and vertical\x0btab",
                "separators \x1c\x1d\x1e\x1f", "line\u2028para\u2029sep", "interlinear \ufff9anchor\ufffb"]
    out += [("control_format", t) for t in controls]
    specials = ["[CLS] hi [SEP] [MASK]", "[UNK] unknown [PAD] pad", "what is [MASK]?", "[mask] lowercase is text",
                "a[SEP]b", "[CLS][CLS][SEP]", "[CLS", "SEP]", "[ CLS ]", "x [MASK][MASK] y", "[UNK]"]
    out += [("special_tokens", t) for t in specials]
    long_word = "supercalifragilisticexpialidocious" * 4
    words = [long_word, "a" * 100, "b" * 101, "x" * 99 + "é", "Hello " + "z" * 150 + " world",
             "pneumonoultramicroscopicsilicovolcanoconiosis", "antidisestablishmentarianism-and-more-hyphens",
             "😀" * 120, "http://example.com/a/very/long/path?query=string&x=1#frag"]
    out += [("long_words", t) for t in words]
    spaces = ["tab\tseparated\twords", "new\nline", "carriage\r\nreturn", "no\u00a0break\u00a0space", "ideo\u3000space",
              "thin\u2009space", "  leading and trailing  ", "\t\n ", " ", "", "multiple     spaces", "nnbsp\u202fx",
              "ogham\u1680mark", "em\u2003space", "narrow\u205fmath"]
    out += [("whitespace", t) for t in spaces]
    punct = ["U.S. O'Brien Bre-X 24/7", "what?!...", "e-mail: a.b@c.de", "$100 €50 £3 ¥9", "(brackets) [square] {curly}",
             "«guillemets» „quotes“ ‘single’", "end。 full、stop", "math ± × ÷ ≠ ∞", "¿Qué? ¡Sí!", "~`^_|\\"]
    out += [("punctuation", t) for t in punct]
    trunc = ["set an alarm " * 40, "what is the weather like in " + " and ".join(["Paris", "Berlin", "Tokyo"] * 20),
             " ".join(str(i) for i in range(300)), "字" * 500, ("word " * 5000).strip()]
    out += [("truncation", t) for t in trunc]
    return out


def random_texts(n: int, seed: int = 0) -> list:
    """(group, text) of seeded random code points from every plane (surrogates excluded)."""
    rng = random.Random(seed)
    pools = [(0x20, 0x7E), (0xA0, 0x2FFF), (0x3000, 0x9FFF), (0xAC00, 0xD7FF), (0xE000, 0xFFFF), (0x10000, 0x1FFFF),
             (0x20000, 0x3FFFF), (0xE0000, 0x10FFFF), (0x0, 0x1F)]
    out = []
    for _ in range(n):
        chars = []
        for _ in range(rng.randint(1, 24)):
            a, b = rng.choice(pools)
            chars.append(chr(rng.randint(a, b)) if rng.random() < 0.7 else rng.choice(" \tabcXYZ.,'-"))
        out.append(("random", "".join(chars)))
    return out


def pair_texts(singles: list, n: int, seed: int = 1) -> list:
    """(group, text, pair): random pairs of the texts above, plus pairs built to exercise truncation."""
    rng = random.Random(seed)
    texts = [t for _, t in singles]
    out = [("pairs", rng.choice(texts), rng.choice(texts)) for _ in range(n)]
    long_a, long_b = "first " * 60, "second " * 45
    out += [("pairs_truncation", long_a, long_b), ("pairs_truncation", long_a, "short"),
            ("pairs_truncation", "short", long_b), ("pairs_truncation", "", long_b), ("pairs_truncation", long_a, ""),
            ("pairs_truncation", "a b c d e f g h i j", "k l m n o p q r s t u"), ("pairs", "", "")]
    return out


def _row(group, text, pair, enc) -> dict:
    return {"group": group, "text": text, "pair": pair, "ids": enc.ids, "type_ids": enc.type_ids,
            "offsets": [list(o) for o in enc.offsets], "sequence_ids": enc.sequence_ids}


def tokenizer_golden(tok, fingerprint: str, max_seq_len: int) -> dict:
    """golden_tokenizer.json for a bundle tokenizer (truncation at max_seq_len already set)."""
    import tokenizers

    singles = shipped_dev_texts() + edge_texts() + random_texts(300)
    pairs = pair_texts(singles, 150)
    rows = [_row(g, t, None, e) for (g, t), e in zip(singles, tok.encode_batch([t for _, t in singles]))]
    rows += [_row(g, a, b, e) for (g, a, b), e in zip(pairs, tok.encode_batch([(a, b) for _, a, b in pairs]))]
    if len(rows) < MIN_TEXTS:
        raise UserError(f"only {len(rows)} tokenizer golden texts (models/data incomplete?); restore models/data")
    return {"schema_version": GOLDEN_FORMAT, "tokenizers_version": tokenizers.__version__, "tokenizer_fingerprint": fingerprint,
            "max_seq_len": max_seq_len, "offsets": "code points of the text the token came from; template tokens [0, 0]",
            "cases": rows}


def span_golden(tok, breaks: frozenset, max_seq_len: int) -> dict:
    """golden_spans.json: the known-answer cases with ids, offsets and a label id per token."""
    from tokenizers import Tokenizer

    from runtime_py.predictor import tag_spans, words

    src = json.loads(SPAN_CASES.read_text(encoding="utf-8"))
    labels = src["labels"]
    out = []
    for case in src["cases"]:
        n = case.get("max_seq_len", max_seq_len)
        t = Tokenizer.from_str(tok.to_str())
        t.enable_truncation(max_length=n)
        enc = t.encode(case["text"])
        label_ids = [labels.index("O")] * len(enc.ids)
        seen = set()
        for w, j in words(enc, case["text"], breaks):
            label_ids[j] = labels.index(case["word_tags"][w] if w not in seen else case["continuation"])
            seen.add(w)
        got = tag_spans(label_ids, labels, enc, case["text"], breaks)
        if got != case["spans"]:
            raise UserError(f"span case {case['name']!r}: runtime_py decodes {got}, the case expects {case['spans']}; "
                            f"fix the decoder or the case in {SPAN_CASES.name}")
        out.append({"name": case["name"], "text": case["text"], "max_seq_len": n, "ids": enc.ids,
                    "offsets": [list(o) for o in enc.offsets], "label_ids": label_ids, "spans": case["spans"]})
    return {"schema_version": GOLDEN_FORMAT, "labels": labels, "cases": out}


def write_all(bundle_dir, out_dir) -> dict:
    """Write golden_tokenizer.json and golden_spans.json for a bundle into `out_dir`; returns counts."""
    from tokenizers import Tokenizer

    from runtime_py.bundle import load_manifest
    from runtime_py.predictor import word_breaks
    from toolchain.fsutil import write_bytes_atomic

    bundle_dir, out_dir = Path(bundle_dir), Path(out_dir)
    m = load_manifest(bundle_dir)
    tok = Tokenizer.from_file(str(bundle_dir / m.tokenizer.file))
    breaks = word_breaks(json.loads((bundle_dir / m.tokenizer.tables).read_text(encoding="utf-8")))
    tg = tokenizer_golden(tok, m.tokenizer.fingerprint, m.max_seq_len)
    sg = span_golden(tok, breaks, m.max_seq_len)
    for name, obj in (("golden_tokenizer.json", tg), ("golden_spans.json", sg)):
        write_bytes_atomic(out_dir / name, (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8"))
    return {"tokenizer_cases": len(tg["cases"]), "span_cases": len(sg["cases"])}
