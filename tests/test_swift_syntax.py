"""The iOS demo's Swift sources parse (tree-sitter-swift).

No Swift compiler runs here, so this is the check the Swift code gets on every test run: every
`.swift` file under ios_demo/ parses without an ERROR or MISSING node. It catches broken syntax, not
type errors; `swift test` in ios_demo/CTBKit (macOS or Linux with a Swift toolchain) is the real test.
"""

from pathlib import Path

import tree_sitter
import tree_sitter_swift

IOS_DEMO = Path(__file__).resolve().parent.parent / "ios_demo"
SKIP_DIRS = {".build", ".swiftpm", "DerivedData"}  # build outputs and package checkouts
PARSER = tree_sitter.Parser(tree_sitter.Language(tree_sitter_swift.language()))


def swift_files() -> list:
    return sorted(p for p in IOS_DEMO.rglob("*.swift") if not SKIP_DIRS & set(p.relative_to(IOS_DEMO).parts))


def syntax_problems(source: bytes) -> list:
    """(line, column, what) of every ERROR and MISSING node, 1-based, in source order."""
    out, stack = [], [PARSER.parse(source).root_node]
    while stack:
        node = stack.pop()
        if node.is_missing:
            out.append((node.start_point[0] + 1, node.start_point[1] + 1, f"MISSING {node.type}"))
        elif node.is_error:
            out.append((node.start_point[0] + 1, node.start_point[1] + 1, "ERROR"))
        if node.has_error:
            stack.extend(node.children)
    return sorted(out)


def test_ios_demo_has_swift_sources():
    files = swift_files()
    assert files, f"no .swift file under {IOS_DEMO}"
    assert any(p.parts[-2] == "CTBKit" and p.parent.parent.name == "Sources" for p in files), \
        "ios_demo/CTBKit/Sources/CTBKit holds no .swift file"


def test_every_swift_file_parses():
    files = swift_files()
    assert files, f"no .swift file under {IOS_DEMO}"
    bad = [f"{p.relative_to(IOS_DEMO.parent)}:{line}:{col}: {what}"
           for p in files for line, col, what in syntax_problems(p.read_bytes())]
    assert not bad, f"{len(bad)} syntax problem(s) in the Swift sources:\n" + "\n".join(bad)


def test_the_check_reports_broken_swift():
    good = b"import Foundation\n\nstruct A {\n    let x: Int\n    func f() -> Int { x + 1 }\n}\n"
    assert syntax_problems(good) == []
    missing_paren = b"func f( {\n}\n"
    assert any(what.startswith("MISSING") or what == "ERROR" for _, _, what in syntax_problems(missing_paren))
    stray = b"struct B {\n    let y = \n}\nlet z = )\n"
    problems = syntax_problems(stray)
    assert problems and problems[0][0] in (2, 3, 4), problems
