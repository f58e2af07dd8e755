"""The README and docs/: every relative link resolves, the README stays short, its commands parse, and
the five-minute tour runs as written."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = [README, *sorted((REPO / "docs").rglob("*.md"))]
TOUR_HEADING = "## A five-minute tour"
TOUR_DIR = "/tmp/tour"  # the scratch folder the tour writes to; the test puts its own there

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.S | re.M)
CODE_SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.M)


def prose(text: str) -> str:
    """The Markdown without fenced code blocks and code spans, where a link is text, not a link."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def links(path: Path) -> list:
    text = prose(path.read_text(encoding="utf-8"))
    return LINK.findall(text) + REF_DEF.findall(text)


def bash_blocks(text: str) -> list:
    return re.findall(r"^```bash\n(.*?)^```", text, re.S | re.M)


def test_docs_exist():
    names = {p.relative_to(REPO).as_posix() for p in DOCS}
    for want in ("docs/recipes.md", "docs/training.md", "docs/export.md", "docs/contract.md", "docs/apps.md",
                 "docs/ci.md", "docs/development.md"):
        assert want in names
    assert list((REPO / "docs" / "results").glob("2*.md")), "docs/results/ holds the dated measurements"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_resolve(doc):
    """Every relative link names an existing file inside the repository, without an anchor (headings
    get renamed; a file does not move without this test noticing)."""
    bad = []
    for target in links(doc):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto:: not ours to check
            continue
        if "#" in target:
            bad.append(f"{target}: anchors are not checked, link the file")
            continue
        resolved = (doc.parent / target).resolve()
        if not resolved.is_relative_to(REPO):
            bad.append(f"{target}: outside the repository")
        elif not resolved.is_file():
            bad.append(f"{target}: no such file")
    assert not bad, f"{doc.relative_to(REPO)}: " + "; ".join(bad)


def test_link_checker_sees_links():
    text = "[a](docs/x.md) `[b](no.md)` ![c](img.png)\n```\n[d](code.md)\n```\n[e]: ref.md\n"
    found = LINK.findall(prose(text)) + REF_DEF.findall(prose(text))
    assert found == ["docs/x.md", "img.png", "ref.md"]


def test_readme_is_short():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= 150, f"README.md has {n} lines; move the detail to docs/"


def tour_lines() -> list:
    text = README.read_text(encoding="utf-8")
    assert TOUR_HEADING in text, f"README.md has no {TOUR_HEADING!r} section"
    section = text.split(TOUR_HEADING, 1)[1].split("\n## ", 1)[0]
    blocks = bash_blocks(section)
    assert blocks, "the tour has no ```bash block"
    return [ln.strip() for ln in blocks[0].splitlines() if ln.strip() and not ln.strip().startswith("#")]


def ctb_commands(text: str) -> list:
    """Every `ctb-mobile ...` command in the README's bash blocks (split at && and ;)."""
    out = []
    for block in bash_blocks(text):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0]
            for part in re.split(r"&&|;", line):
                words = shlex.split(part)
                if words and words[0] == "ctb-mobile":
                    out.append(words[1:])
    return out


def test_readme_commands_parse():
    """The README's ctb-mobile commands name real commands and options (parsed by the CLI itself, not run)."""
    import typer.main

    from toolchain.cli import app

    group = typer.main.get_command(app)
    commands = ctb_commands(README.read_text(encoding="utf-8"))
    assert {c[0] for c in commands} >= {"build", "predict", "train", "merge", "export", "verify", "embed"}
    for args in commands:
        ctx = group.make_context("ctb-mobile", list(args))
        sub = group.get_command(ctx, args[0])
        assert sub is not None, f"no command {args[0]!r}"
        sub.make_context(args[0], list(args[1:]), parent=ctx)  # raises on an unknown option or bad value


def test_tour_is_the_pipeline_by_hand():
    lines = tour_lines()
    stages = [shlex.split(ln)[1] for ln in lines if ln.startswith("ctb-mobile ")]
    assert stages == ["train", "merge", "export", "verify", "predict", "embed"]
    assert all(TOUR_DIR in ln for ln in lines), f"every tour line writes under {TOUR_DIR}"


@pytest.mark.slow
def test_tour_runs_as_written(tmp_path):
    """The README's tour, line by line as a newcomer pastes it, with its scratch folder moved to tmp_path."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    outputs = {}
    for line in tour_lines():
        cmd = line.replace(TOUR_DIR, str(tmp_path))
        r = subprocess.run(["bash", "-c", cmd], cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
        assert r.returncode == 0, f"{line}\nexit {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
        outputs[shlex.split(line)[1] if line.startswith("ctb-mobile ") else line] = r.stdout
    texts = [w for ln in tour_lines() if ln.startswith("ctb-mobile predict ") for w in shlex.split(ln)[3:]]
    rows = [json.loads(ln) for ln in outputs["predict"].splitlines()]
    assert len(rows) == len(texts) and all(isinstance(r, dict) and r for r in rows), outputs["predict"]
    app = tmp_path / "android_demo" / "app" / "src" / "main" / "assets" / "bundle"
    assert (app / "manifest.json").is_file(), "embed put the bundle into the scratch copy of the app"
