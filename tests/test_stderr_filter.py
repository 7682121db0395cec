"""`filtered_stderr`: lines written to file descriptor 2 that match are dropped, everything
else passes, progress bars at once, and nothing is lost when the process dies."""

import os
import subprocess
import sys
import time

from pipeline.train.stderr_filter import filtered_stderr

PATTERN = r"^\[\S+ E \d+\] core_worker\.cc: false alarm"


def test_matching_lines_are_dropped_and_the_rest_passes_in_order(capfd):
    with filtered_stderr(PATTERN):
        os.write(2, b"first line\n[2026 E 12] core_worker.cc: false alarm, actor 7\n")
        os.write(2, b"[2026 E 12] core_worker.cc: a real error\n")
        os.write(2, b"last line\n")
    assert capfd.readouterr().err == (
        "first line\n[2026 E 12] core_worker.cc: a real error\nlast line\n"
    )


def test_a_bar_redrawn_without_newlines_passes_before_its_line_ends(capfd):
    with filtered_stderr(PATTERN):
        os.write(2, b"\rbar  50%")
        deadline = time.monotonic() + 10
        shown = ""
        while "bar  50%" not in shown and time.monotonic() < deadline:
            time.sleep(0.05)
            shown += capfd.readouterr().err
        assert "bar  50%" in shown
        os.write(2, b"\rbar 100%\n")
    assert capfd.readouterr().err == "\rbar 100%\n"


def test_what_a_dying_process_wrote_last_still_arrives():
    program = (
        "import os; from pipeline.train.stderr_filter import filtered_stderr\n"
        f"with filtered_stderr({PATTERN!r}):\n"
        "    os.write(2, b'[2026 E 12] core_worker.cc: false alarm\\n')\n"
        "    os.write(2, b'fatal: the last words\\n')\n"
        "    os._exit(3)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program],
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 3
    assert result.stderr == b"fatal: the last words\n"
