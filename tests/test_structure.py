"""Facts about the house that a maintainer relies on: no import cycle among toolchain/ and runtime_py/
modules (imports inside functions count), training is imported only by the stages that train, no
function longer than 60 lines, and none with more than 7 parameters that are not keyword-only with
defaults (CLI commands included: typer passes options by keyword)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRAINERS = {"toolchain.distill", "toolchain.cli", "toolchain.build"}  # build: the CLI's pipeline of commands


def import_graph() -> dict:
    mods = {}
    for p in [*ROOT.glob("toolchain/**/*.py"), *ROOT.glob("runtime_py/**/*.py")]:
        mods[".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")] = p
    graph = {m: set() for m in mods}
    for m, p in mods.items():
        package = m if p.name == "__init__.py" else m.rpartition(".")[0]
        for n in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(n, ast.Import):
                names = [a.name for a in n.names]
            elif isinstance(n, ast.ImportFrom):
                base = n.module or ""
                if n.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - n.level + 1] + ([base] if base else []))
                names = [base] + [f"{base}.{a.name}" for a in n.names]
            else:
                continue
            for t in names:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != m and not m.startswith(t + "."):  # a package's own __init__ is not an edge
                    graph[m].add(t)
    return graph


def cycle(graph) -> list:
    """One import cycle as a list of modules, or []."""
    state, path = {}, []

    def visit(v):
        state[v] = 1
        path.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                return path[path.index(w):] + [w]
            if w not in state and (found := visit(w)):
                return found
        state[v] = 2
        path.pop()
        return []

    for v in sorted(graph):
        if v not in state and (found := visit(v)):
            return found
    return []


def test_no_import_cycle():
    assert cycle(import_graph()) == []


def test_the_cycle_finder_finds_one():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_only_the_training_stages_import_training():
    importers = {m for m, deps in import_graph().items() if "toolchain.train" in deps}
    assert importers <= TRAINERS, importers - TRAINERS


MAX_LINES, MAX_POSITIONAL = 60, 7
SOURCES = [*ROOT.glob("toolchain/**/*.py"), *ROOT.glob("runtime_py/**/*.py")]


def functions(paths):
    """(path:line name, lines, parameters that are not keyword-only with a default) of every function."""
    for p in sorted(paths):
        for n in ast.walk(ast.parse(Path(p).read_text(encoding="utf-8"))):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = n.args
                plain = [x for x in a.posonlyargs + a.args if x.arg not in ("self", "cls")]
                required_kw = [d for d in a.kw_defaults if d is None]
                yield f"{Path(p).name}:{n.lineno} {n.name}", n.end_lineno - n.lineno + 1, len(plain) + len(required_kw)


def test_no_function_is_longer_than_60_lines():
    assert [(f, n) for f, n, _ in functions(SOURCES) if n > MAX_LINES] == []


def test_no_function_takes_more_than_7_parameters_that_are_not_keyword_only():
    assert [(f, k) for f, _, k in functions(SOURCES) if k > MAX_POSITIONAL] == []


def test_the_function_facts_find_a_long_function_and_a_long_signature(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("def wide(a, b, c=1, *, d, e=2):\n    pass\n\n\nclass K:\n    def long(self):\n"
                   + "        x = 1\n" * 61)
    assert sorted(functions([src])) == [("m.py:1 wide", 2, 4), ("m.py:6 long", 62, 0)]
