"""Atomic writes (outputs appear complete or not at all, never half-written) and the one rule for
names that become paths (task names, recipe names): plain names that stay inside their folder."""

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from toolchain import UserError

NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,127}")  # the manifest schema's "name" pattern


def check_name(value, what: str) -> str:
    """`value` if it is a plain name (ASCII letters, digits, '_' and '-', not starting with '-')."""
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise UserError(f"{what} {value!r} is not a plain name; use ASCII letters, digits, '_' or '-' "
                        "(at most 128, not starting with '-')")
    return value


def child(parent: Path, name, what: str) -> Path:
    """parent/name for a checked name, refused if it resolves outside `parent` (a symlink, say)."""
    path = Path(parent) / check_name(name, what)
    if os.path.realpath(path) != os.path.join(os.path.realpath(parent), name):
        raise UserError(f"{what} {name!r}: {path} leads outside {parent} (a link?); remove the link")
    return path


def read_json(path: Path, fix: str = "restore it, or rerun the step that wrote it"):
    """A JSON file's content; a missing, unreadable or malformed file is one UserError naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e.msg}, line {e.lineno}); {fix}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text; {fix}") from None
    except OSError as e:
        raise UserError(f"{path} cannot be read ({e.strerror}); {fix}") from None


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; the file follows the umask, as cp would
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: Path, obj) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _leftovers(path: Path) -> dict:
    """Hidden siblings that a killed swap of `path` left, by kind (tmp, new, old, removed): {kind: [folders]}."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(tmp|new|old|removed)-(\d+)(?:-\w+)?\Z")
    found = {}
    for p in path.parent.iterdir() if path.parent.is_dir() else ():
        m = pattern.match(p.name)
        if m and int(m[2]) != os.getpid() and not _alive(int(m[2])):
            found.setdefault(m[1], []).append(p)
    return found


def recover(path: Path) -> None:
    """Repair what a process killed while replacing `path` left behind (the lock is held): a finished
    folder that was not yet swapped in is swapped in, a folder swapped out but not yet replaced is
    restored, and temporary folders of dead processes are deleted."""
    path = Path(path)
    left = _leftovers(path)
    for new in left.get("new", []):  # complete (renamed to .new only after its block succeeded)
        if not path.exists():
            os.replace(new, path)
        else:
            shutil.rmtree(new, ignore_errors=True)
    for old in left.get("old", []):
        if not path.exists():
            os.replace(old, path)
        else:
            shutil.rmtree(old, ignore_errors=True)
    for kind in ("tmp", "removed"):
        for p in left.get(kind, []):
            shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def locked(path: Path, wait: float = 0):
    """Hold `.<name>.lock` beside `path`. A second writer waits up to `wait` seconds, then fails in one line."""
    from filelock import FileLock, Timeout

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path.parent / f".{path.name}.lock"))
    try:
        lock.acquire(timeout=wait)
    except Timeout:
        raise UserError(f"{path} is being written by another ctb-mobile process (lock {lock.lock_file}); "
                        "wait for it to finish, or write elsewhere") from None
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def atomic_dir(path: Path, lock: Path | None = None):
    """Yield a fresh temporary folder that replaces `path` only if the block succeeds. A lock (beside
    `lock`, by default `path`) keeps a second writer out; a swap cut short by a kill is repaired by
    the next write to the same place."""
    path = Path(path)
    with locked(lock or path):
        recover(path)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-{os.getpid()}-"))
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; the folder follows the umask, as mkdir would
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        new = path.with_name(f".{path.name}.new-{os.getpid()}")
        os.replace(tmp, new)  # from here on the new content is complete: recover() swaps it in
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        if path.exists():
            os.replace(path, old)
        os.replace(new, path)
        shutil.rmtree(old, ignore_errors=True)
