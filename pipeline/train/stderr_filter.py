"""Dropping lines that native code writes straight to this process's standard error.

Ray's C++ core worker inside a driver logs its errors to file descriptor 2 itself, past
Python's `sys.stderr`, its loggers and Ray's own line filters (which only see what other Ray
processes forward). `filtered_stderr` puts a pipe in front of descriptor 2 for a while and
runs a small process that copies the pipe to the real standard error, line by line, leaving
out the lines that match a pattern.

The copier is a separate process, not a thread, so that nothing is lost when this process
dies: a fatal error printed just before an abort still reaches the terminal, because the
copier reads until the last writer has gone. It ignores SIGINT and SIGTERM (a Ctrl-C or
`ray job stop` reaches the whole process group) and ends on end of file, so the job's own
last lines after an interrupt are not cut off either. Text that does not end in a newline
(a progress bar redrawn with carriage returns) passes at once; only a partial line that
could be the start of a native log line (`[`) waits for its newline.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator

# Runs in `python -I -S`: the standard library's builtins only.
_COPIER = r"""
import os, re, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
dropped = re.compile(sys.argv[1].encode())

def write(data):
    while data:
        data = data[os.write(1, data):]

pending = b""
while True:
    try:
        chunk = os.read(0, 65536)
    except InterruptedError:
        continue
    if not chunk:
        break
    *lines, pending = (pending + chunk).split(b"\n")
    kept = b"".join(line + b"\n" for line in lines if not dropped.search(line))
    if pending and not pending.startswith(b"["):
        kept, pending = kept + pending, b""
    write(kept)
write(pending)
"""
# How long the end of the block waits for the copier to pass on what is left.
_DRAIN_TIMEOUT_S = 5.0


@contextlib.contextmanager
def filtered_stderr(pattern: str) -> Iterator[None]:
    """Within the block, lines written to file descriptor 2 that match the regular expression
    `pattern` are dropped; everything else reaches standard error as before.

    Python's own `sys.stderr`, when it writes to descriptor 2, is pointed straight at the real
    standard error for the block, so what Python prints (progress bars, the lines Ray forwards
    from its workers) keeps its order against standard output; the pipe then carries only what
    native code and handlers made before the block write."""
    try:
        original = os.dup(2)
    except OSError:  # no standard error to filter
        yield
        return
    python_stderr = sys.stderr
    python_stderr.flush()
    copier = subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", _COPIER, pattern],
        stdin=subprocess.PIPE,
        stdout=original,
        stderr=original,
    )
    os.dup2(copier.stdin.fileno(), 2)
    if _descriptor(python_stderr) == 2:
        sys.stderr = open(  # noqa: SIM115 (left open: see the end of the block)
            original,
            "w",
            buffering=1,
            encoding=python_stderr.encoding,
            errors=python_stderr.errors,
            closefd=False,
        )
    direct = sys.stderr is not python_stderr
    try:
        yield
    finally:
        sys.stderr.flush()
        sys.stderr = python_stderr
        os.dup2(original, 2)
        # A logging handler made inside the block keeps the direct stream: it stays open, on
        # its own copy of the real standard error, for the rest of the process.
        if not direct:
            os.close(original)
        copier.stdin.close()
        # Processes started inside the block may still hold the pipe; the copier then ends
        # when they do, and passes on what they write until then.
        with contextlib.suppress(subprocess.TimeoutExpired):
            copier.wait(timeout=_DRAIN_TIMEOUT_S)


def _descriptor(stream) -> int | None:
    """The file descriptor `stream` writes to, None when it has none (a capture buffer)."""
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None
