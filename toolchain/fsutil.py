"""Atomic writes (outputs appear complete or not at all, never half-written) and the one rule for
names that become paths (task names, recipe names): plain names that stay inside their folder.

Folder swaps follow three rules, all here:
- a command replaces only a folder of the kind it writes (`KINDS`: a bundle by a bundle, told by its
  manifest.json; a store by a store, by its store.json; ...), or an empty or missing one, and never the
  working folder, one of its inputs, or a folder holding either;
- writers hold `.<name>.lock` beside the folder exclusively and readers hold it shared (`reading`), so a
  reader sees the old folder or the new one, never none;
- a swap cut short by a kill is repaired (`recover`) before anything is checked or read.
The locks are POSIX record locks (fcntl.lockf: Linux and macOS), re-entrant within one thread."""

import contextlib
import json
import os
import re
import shutil
import stat
import tempfile
import threading
import time
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


def follow_umask(path: Path) -> None:
    """Give a file written by a library that makes it 0600 (safetensors' save_file) the mode of every other
    file: 0666 less the umask, as cp would."""
    os.chmod(path, 0o666 & ~_umask())


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


# ---------------------------------------------------------------------------------------------
# What a command may replace

KINDS = {  # the kind of folder a command writes -> the files (any one) that tell a folder of that kind
    "bundle": ("manifest.json",),
    "store": ("store.json",),
    "branch": ("branch.json",),
    "verify report": ("verify.json",),
    "golden": ("golden.json",),
    "bench": ("bench.json",),
    "run": ("result.json", "branch.json", "ckpt"),
    "backbone": ("config.json",),
    "export cache entry": ("files.json",),
    "peer model": ("source.json",),
}


def _within(inner: str, outer: str) -> bool:
    return inner == outer or inner.startswith(outer.rstrip(os.sep) + os.sep)


def _marked(path: Path, kind: str) -> str | None:
    """The marker file of `kind` that `path` holds (a plain file or folder, not a link), if any."""
    return next((m for m in KINDS[kind] if os.path.lexists(path / m) and not os.path.islink(path / m)), None)


def kind_of(path) -> str | None:
    """The kind of folder `path` is (KINDS), told by its marker file; None for any other folder."""
    path = Path(path)
    return next((k for k in KINDS if path.is_dir() and _marked(path, k)), None)


def check_replaceable(path, kind: str | None, protect=()) -> None:
    """Refuse, in one line naming the folder and what it holds, to replace `path` unless it is missing,
    empty, or a folder of `kind` (see KINDS); and never replace the working folder, an input in `protect`
    or a folder holding one, nor write inside an input. `kind` None (private folders such as test
    scratch) skips the content rule only."""
    path = Path(path)
    real = os.path.realpath(path)
    for p, role in [(Path.cwd(), "the working folder"), *((Path(q), f"the input {q}") for q in protect if q)]:
        rp = os.path.realpath(p)
        if _within(rp, real):
            raise UserError(f"{path} is not replaced: it {'is' if rp == real else 'holds'} {role}; "
                            "choose another output folder")
        if role != "the working folder" and _within(real, rp) and os.path.isdir(rp):
            raise UserError(f"{path} is inside {role}; write outputs outside a command's inputs")
    if os.path.islink(path):
        raise UserError(f"{path} is a link (to {os.readlink(path)}), not a {kind or 'output'} folder; "
                        "remove the link or choose another output folder")
    if not path.exists():
        return
    if not path.is_dir():
        raise UserError(f"{path} exists and is not a folder; choose another output folder")
    names = sorted(os.listdir(path))
    if not names or kind is None or _marked(path, kind):
        return
    other = next((k for k in KINDS if k != kind and _marked(path, k)), None)
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    what = f"it is a {other} folder ({_marked(path, other)})" if other else f"it holds {shown}"
    raise UserError(f"{path} is not a {kind} folder ({what}; no {KINDS[kind][0]}), so it is not replaced; "
                    "choose another output folder, or empty it first")


def remove_tree(path) -> None:
    """Delete a folder as `rm -rf` does for its owner: read-only folders inside are made writable
    first. Raises OSError on what still cannot be deleted."""
    path = Path(path)
    try:
        shutil.rmtree(path)
        return
    except FileNotFoundError:
        return
    except OSError:
        pass
    for d, dirs, _ in os.walk(path):
        with contextlib.suppress(OSError):
            os.chmod(d, os.stat(d).st_mode | stat.S_IRWXU)
        for sub in dirs:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(d, sub), os.stat(os.path.join(d, sub)).st_mode | stat.S_IRWXU)
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path)


def _remove_left(p: Path, why: str) -> None:
    try:
        remove_tree(p)
    except OSError as e:
        raise UserError(f"{p} ({why}) cannot be deleted ({e.strerror}); delete it by hand") from None


# ---------------------------------------------------------------------------------------------
# Locks: writers exclusive, readers shared

READ_WAIT = 120.0  # seconds a reader waits for a writer's swap
_held = threading.local()


def _locks() -> dict:
    if not hasattr(_held, "locks"):
        _held.locks = {}
    return _held.locks


def lock_file(path) -> Path:
    path = Path(path)
    return path.parent / f".{path.name}.lock"


WRITER, CONTENT = 0, 1  # the lock file's bytes: the writers' gate, and the content (shared by readers)


def _poll(fd: int, how: int, byte: int, until: float, busy, lf: Path) -> None:
    import errno
    import fcntl

    while True:
        try:
            fcntl.lockf(fd, how | fcntl.LOCK_NB, 1, byte)
            return
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            if time.monotonic() >= until:
                raise UserError(busy(lf)) from None
            time.sleep(0.02)


@contextlib.contextmanager
def _flock(path: Path, shared: bool, wait: float, busy):
    """Lock `path`'s lock file: POSIX record locks on two bytes, so that a writer waits for readers
    (briefly) but a second writer fails at once, and a waiting writer lets no new reader in. Record
    locks belong to the process: one thread per lock file (the registry below makes it re-entrant)."""
    import fcntl

    lf = lock_file(path)
    key = os.path.realpath(lf)
    mine = _locks().get(key)
    if mine is not None:  # re-entrant in one thread: an exclusive lock covers both
        if shared or not mine:
            yield
            return
        raise RuntimeError(f"{lf} is held shared by this thread and cannot be made exclusive")
    fd = None
    if shared:
        if os.path.lexists(path):  # no lock file is made beside a folder that is not there
            with contextlib.suppress(OSError):
                fd = os.open(lf, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        if fd is None:  # a folder we cannot write beside: try the existing lock, else no one can write here
            with contextlib.suppress(OSError):
                fd = os.open(lf, os.O_RDONLY | os.O_CLOEXEC)
    else:
        lf.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lf, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    if fd is None:
        yield
        return
    try:
        now = time.monotonic()
        if shared:  # through the writers' gate (none holds or waits for it), then read
            _poll(fd, fcntl.LOCK_SH, WRITER, now + wait, busy, lf)
            try:
                _poll(fd, fcntl.LOCK_SH, CONTENT, now + wait, busy, lf)
            finally:
                fcntl.lockf(fd, fcntl.LOCK_UN, 1, WRITER)
        else:  # one writer at a time (a reader holds the gate only while passing through), then readers drain
            _poll(fd, fcntl.LOCK_EX, WRITER, now + max(wait, 1.0), busy, lf)
            _poll(fd, fcntl.LOCK_EX, CONTENT, now + max(wait, READ_WAIT), lambda lf: (
                f"{path} has been read by other ctb-mobile processes for {READ_WAIT:.0f} s (lock {lf}); "
                "try again when they have finished"), lf)
        _locks()[key] = shared
        try:
            yield
        finally:
            del _locks()[key]
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def locked(path: Path, wait: float = 0):
    """Hold `.<name>.lock` beside `path` exclusively. A second writer waits up to `wait` seconds, then
    fails in one line."""
    path = Path(path)
    with _flock(path, False, wait, lambda lf: f"{path} is being written by another ctb-mobile process (lock {lf}); "
                "wait for it to finish, or write elsewhere"):
        yield


@contextlib.contextmanager
def reading(path: Path, wait: float = READ_WAIT):
    """Hold `path`'s lock shared while reading the folder (and folders swapped inside it, such as a
    store's branches): a writer's swap finishes first, and one cut short by a kill is repaired first,
    so a reader sees the old content or the new, never a folder missing."""
    path = Path(path)
    if os.path.realpath(lock_file(path)) in _locks():
        yield
        return

    def busy(lf):
        return (f"{path} has been held by a writer for {wait:.0f} s (lock {lf}); try again when it has finished")

    for _ in range(3):
        with _flock(path, True, wait, busy):
            if not _needs_recovery(path):
                yield
                return
        with _flock(path, False, wait, busy):
            try:
                recover_tree(path)
            except OSError as e:
                raise UserError(f"{path}: a change cut short by a kill cannot be repaired here ({e.strerror}: "
                                f"{e.filename}); rerun where the folder is writable") from None
    raise UserError(f"{path} keeps changing while it is read; try again when its writers have finished")


# ---------------------------------------------------------------------------------------------
# Swaps and their repair

_LEFT = re.compile(r"\.(.+)\.(tmp|new|old|removed)-(\d+)(?:-\w+)?\Z")


def _leftovers(path: Path) -> dict:
    """Hidden siblings that a swap of `path` cut short left, by kind (tmp, new, old, removed). Called with
    the lock held, so no swap of `path` is under way: every one was left by a killed process (or by this
    one, failing after its swap)."""
    found = {}
    for p in path.parent.iterdir() if path.parent.is_dir() and not path.parent.is_symlink() else ():
        m = _LEFT.match(p.name)
        if m and m[1] == path.name:
            found.setdefault(m[2], []).append(p)
    return found


def _left_names(folder: Path) -> set:
    """Names of the folders inside `folder` that have leftovers beside them."""
    if not folder.is_dir() or folder.is_symlink():
        return set()
    return {m[1] for m in map(_LEFT.match, os.listdir(folder)) if m}


def _needs_recovery(path: Path) -> bool:
    path = Path(path)
    if path.name in _left_names(path.parent):
        return True
    subs = [path] + ([p for p in path.iterdir() if p.is_dir() and not p.is_symlink()] if path.is_dir()
                     and not path.is_symlink() else [])
    return any(_left_names(d) for d in subs)


def recover(path: Path) -> None:
    """Repair what a process killed while replacing `path` left behind (the lock is held): a finished
    folder that was not yet swapped in is swapped in, a folder swapped out but not yet replaced is
    restored, and temporary folders are deleted."""
    path = Path(path)
    left = _leftovers(path)
    for new in left.get("new", []):  # complete (renamed to .new only after its block succeeded)
        if not os.path.lexists(path):
            os.replace(new, path)
        else:
            _remove_left(new, "a replacement that lost its swap")
    for old in left.get("old", []):
        if not os.path.lexists(path):
            os.replace(old, path)
        else:
            _remove_left(old, "a replaced folder")
    for kind in ("tmp", "removed"):
        for p in left.get(kind, []):
            _remove_left(p, "a temporary folder")


def recover_tree(path: Path) -> None:
    """recover() `path` and every folder swapped inside it, one level down (a store's branches)."""
    path = Path(path)
    recover(path)
    if path.is_dir() and not path.is_symlink():
        for d in [path, *(p for p in path.iterdir() if p.is_dir() and not p.is_symlink())]:
            for name in _left_names(d):
                recover(d / name)


@contextlib.contextmanager
def atomic_dir(path: Path, kind: str | None = None, protect=(), lock: Path | None = None):
    """Yield a fresh temporary folder that replaces `path` only if the block succeeds. A lock (beside
    `lock`, by default `path`) keeps a second writer out and readers (`reading`) waiting; a swap cut short
    by a kill is repaired first; `path` must be replaceable by a folder of `kind` (check_replaceable)."""
    path = Path(path)
    check_replaceable(path, kind, protect)  # before the lock file is made; again once a kill is repaired
    with locked(lock or path):
        recover(path)
        check_replaceable(path, kind, protect)
        path.parent.mkdir(parents=True, exist_ok=True)
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
        try:
            remove_tree(old)
        except OSError as e:
            raise UserError(f"{path} was replaced, but its previous content {old} cannot be deleted "
                            f"({e.strerror}); delete it by hand") from None


@contextlib.contextmanager
def atomic_dirs(kinds: dict, lock: Path, protect=()):
    """atomic_dir for several folders that change together ({path: kind} -> yields {path: temporary
    folder}): all are replaced or none. The commit point is a journal beside the lock, written once
    every folder is complete; a kill after it is rolled forward by the next write, one before it leaves
    every folder as it was."""
    kinds = {Path(p): k for p, k in kinds.items()}
    paths = list(kinds)
    for p in paths:
        check_replaceable(p, kinds[p], protect)  # before the lock file is made; again once a kill is repaired
    with locked(lock):
        _recover_journals(lock, paths)
        for p in paths:
            recover(p)
            check_replaceable(p, kinds[p], protect)
        pid = os.getpid()
        tmps = {}
        try:
            for p in paths:
                p.parent.mkdir(parents=True, exist_ok=True)
                tmps[p] = Path(tempfile.mkdtemp(dir=p.parent, prefix=f".{p.name}.txn-{pid}-"))
                tmps[p].chmod(0o777 & ~_umask())
            yield dict(tmps)
        except BaseException:
            for t in tmps.values():
                shutil.rmtree(t, ignore_errors=True)
            raise
        journal = _journal(lock, pid)
        write_json_atomic(journal, [[str(tmps[p]), str(p), str(p.with_name(f".{p.name}.txnold-{pid}"))]
                                    for p in paths])
        _roll_forward(journal)


def _journal(lock, pid) -> Path:
    lock = Path(lock)
    return lock.parent / f".{lock.name}.txn-{pid}.json"


def _roll_forward(journal: Path) -> None:
    steps = [[Path(s) for s in step] for step in json.loads(journal.read_text())]
    for tmp, dest, old in steps:
        if tmp.exists():
            if os.path.lexists(dest) and not old.exists():
                os.replace(dest, old)
            elif os.path.lexists(dest):
                _remove_left(dest, "a folder half-replaced")
            os.replace(tmp, dest)
    for _, dest, old in steps:
        _remove_left(old, "a replaced folder")
    journal.unlink()


def _recover_journals(lock, paths) -> None:
    """Finish the group changes a kill cut short after their commit, then delete uncommitted stages."""
    lock = Path(lock)
    pattern = re.compile(rf"(\.)?\.{re.escape(lock.name)}\.txn-\d+\.json(\.\w+\.tmp)?\Z")
    for j in sorted(lock.parent.iterdir()) if lock.parent.is_dir() else ():
        m = pattern.match(j.name)
        if m and m[2]:  # a journal not yet written: its change was not committed
            j.unlink(missing_ok=True)
        elif m and not m[1]:
            _roll_forward(j)
    for p in paths:
        stage = re.compile(rf"\.{re.escape(p.name)}\.txn(old)?-\d+(-\w+)?\Z")
        for q in p.parent.iterdir() if p.parent.is_dir() else ():
            if stage.match(q.name):
                _remove_left(q, "an unfinished change")


def recover_dirs(paths, lock: Path, wait: float = READ_WAIT) -> None:
    """Repair what a kill left of an atomic_dirs change to `paths` (as its next write does first): a
    committed change is finished, an uncommitted one leaves every folder as it was."""
    paths = [Path(p) for p in paths]
    with locked(lock, wait=wait):
        _recover_journals(lock, paths)
        for p in paths:
            recover(p)
