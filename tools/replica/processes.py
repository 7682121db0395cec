"""The replica's processes, found through /proc and stopped by PID, never by name.

Every process of a part is found three ways: the session its first process leads (`ray start
--block`'s daemons stay in it), the marker variable every process of the part inherits
(MARKER_VARIABLE: Ray's core workers take process groups of their own and job drivers sessions
of their own), and the descendants of both.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from replica.state import LocalClusterError, Part, Replica

MARKER_VARIABLE = "APCNET_LOCAL_CLUSTER_PART"
STOP_GRACE_S = 5.0


def marker(replica: Replica, name: str) -> str:
    """The value of MARKER_VARIABLE in every process of part `name`."""
    return f"{replica.directory}/{name}"


@dataclass(frozen=True)
class ProcessEntry:
    ppid: int
    session: int
    state: str
    start_ticks: int


def process_table() -> dict[int, ProcessEntry]:
    """Every process now running, from /proc/<pid>/stat."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            entry = ProcessEntry(int(fields[1]), int(fields[3]), fields[0], int(fields[19]))
            table[int(stat.parent.name)] = entry
    return table


def is_alive(pid: int, table: dict[int, ProcessEntry], start_ticks: int | None = None) -> bool:
    """Running, and the recorded process when `start_ticks` is given. Zombies count as gone:
    where PID 1 reaps no orphans (containers), a stopped process stays a zombie for good."""
    entry = table.get(pid)
    if entry is None or entry.state in ("Z", "X"):
        return False
    return start_ticks is None or entry.start_ticks == start_ticks


def marked_processes(markers: list[str]) -> set[int]:
    """PIDs whose environment holds MARKER_VARIABLE=<one of `markers`>."""
    needles = [f"{MARKER_VARIABLE}={marker}\0".encode() for marker in markers]
    found = set()
    for environ in Path("/proc").glob("[0-9]*/environ"):
        with contextlib.suppress(OSError):
            content = environ.read_bytes()
            if any(needle in content for needle in needles):
                found.add(int(environ.parent.name))
    return found


def processes_of(replica: Replica, parts: list[Part]) -> set[int]:
    """Every live process of `parts`: the ones started, their sessions, every process carrying
    a part's marker (core workers, job drivers), and all their descendants; never this
    process or its ancestors."""
    table = process_table()
    roots = marked_processes([marker(replica, part.name) for part in parts])
    for part in parts:
        if is_alive(part.pid, table, part.start_ticks) or not is_alive(part.pid, table):
            # A live session id is never given to a new process; a reused PID leads another.
            roots |= {pid for pid, entry in table.items() if entry.session == part.pid}
    children: dict[int, list[int]] = {}
    for pid, entry in table.items():
        children.setdefault(entry.ppid, []).append(pid)
    found, pending = set(), list(roots)
    while pending:
        pid = pending.pop()
        if pid not in found:
            found.add(pid)
            pending.extend(children.get(pid, []))
    pid = os.getpid()
    while pid in table and pid > 1:
        found.discard(pid)
        pid = table[pid].ppid
    return {pid for pid in found if is_alive(pid, table)}


def stop_parts(replica: Replica, parts: list[Part], grace_s: float) -> int:
    """SIGTERM every process of `parts` (SIGKILL when `grace_s` is 0), wait up to `grace_s`,
    then SIGKILL what is left, found again each round (a dying raylet may still start a
    worker). Returns how many processes it stopped."""

    def send(pids: set[int], signum: int) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)

    stopped = processes_of(replica, parts)
    send(stopped, signal.SIGTERM if grace_s > 0 else signal.SIGKILL)
    deadline = time.monotonic() + grace_s
    while (left := processes_of(replica, parts)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for _ in range(20):
        if not left:
            return len(stopped)
        stopped = stopped | left
        send(left, signal.SIGKILL)
        time.sleep(0.2)
        left = processes_of(replica, parts)
    raise LocalClusterError(f"processes {sorted(left)} survived SIGKILL: stop them by hand")


def alive_parts(replica: Replica) -> list[str]:
    table = process_table()
    return [p.name for p in replica.parts if is_alive(p.pid, table, p.start_ticks)]
