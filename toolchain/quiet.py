"""A quiet terminal: the tool's own lines on stderr, everything the libraries under it say in a log file.

Third-party chatter (torch.onnx and torchvision warnings, ONNX Runtime's "consider pre-processing",
ExecuTorch's native `cpuinfo_utils.cpp` lines) cannot be told from the tool's own messages, so by default:
- Python warnings raised outside toolchain/ and runtime_py/ go to the log, ours stay on stderr;
- the logging module's records (ONNX Runtime's quantizer logs on the root logger) go to the log;
- whatever writes to stderr, native code on file descriptor 2 or a library on `sys.stderr` (torch's log
  handlers, progress bars), writes to the log: fd 2 is pointed at the log file; the tool prints its own
  lines to `terminal()`, a copy of the terminal's stderr.
`--verbose` (or CTB_VERBOSE=1) leaves all of it on the terminal. The log is CTB_LOG, else
~/.cache/ctb-mobile/ctb-mobile.log, appended to and cut when it passes 20 MB.
"""

import logging
import os
import sys
import warnings
from pathlib import Path

OURS = (str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent / "runtime_py"))
MAX_LOG = 20 << 20
_terminal = None


def terminal():
    """Where the tool's own stderr lines go: the terminal's stderr, also once route() has sent fd 2 to the log."""
    return _terminal or sys.stderr


def log_path() -> Path:
    if os.environ.get("CTB_LOG"):
        return Path(os.environ["CTB_LOG"])
    from toolchain.backbone import cache_root

    return cache_root() / "ctb-mobile.log"


def route(verbose: bool = False) -> Path | None:
    """Send third-party output to the log (see the module docstring); returns the log's path, or None
    when `verbose` or when stderr cannot be redirected."""
    global _terminal
    if verbose or os.environ.get("CTB_VERBOSE"):
        return None
    path = log_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file() and path.stat().st_size > MAX_LOG:
            path.unlink()
        log = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - lives as long as the process
        terminal = os.fdopen(os.dup(2), "w", encoding=sys.stderr.encoding or "utf-8", errors="replace", buffering=1)
        sys.stderr.flush()
        os.dup2(log.fileno(), 2)
    except OSError:
        return None  # no log folder or no fd 2: stay as we are
    _terminal = terminal
    log.write(f"--- ctb-mobile {' '.join(sys.argv[1:])}\n")
    show = warnings.showwarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if str(Path(filename).resolve()).startswith(OURS):
            show(message, category, filename, lineno, file or terminal, line)
        else:
            log.write(warnings.formatwarning(message, category, filename, lineno, line))

    warnings.showwarning = showwarning
    logging.basicConfig(stream=log, level=logging.WARNING, force=True)
    return path
