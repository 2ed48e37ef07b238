"""Child processes started in their own session (a server and the workers it forks), stopped as one group."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def running(argv: list[str], log: Path, env: dict[str, str] | None, cwd: Path, grace_seconds: float = 30,
            signum: int = signal.SIGTERM) -> Iterator[subprocess.Popen]:
    """A server run in its own session, its output in `log` (a pipe nobody reads fills up and blocks it), stopped
    as a group on exit (`stop_group`): how long the stop took, and what had to be killed, end the log."""
    pass_on_sigint()
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        stopping = time.monotonic()
        killed = stop_group(proc, grace_seconds, signum)
        with log.open("a") as out:
            out.write(f"stopped in {time.monotonic() - stopping:.1f} s"
                      + "".join(f"\n  killed after the grace: {line[:300]}" for line in killed) + "\n")


def stop_group(proc: subprocess.Popen, grace_seconds: float = 30, signum: int = signal.SIGTERM) -> list[str]:
    """Stop `proc`'s process group: `signum`, then SIGKILL after `grace_seconds`; reaped either way. Returns the
    command lines of the group's processes that outlived the grace (killed), to say what would not stop.

    `dg dev` wants SIGINT, what Ctrl-C sends its terminal's group: measured idle, the whole group was gone in 2 s;
    on SIGTERM the leader left its code server behind, and after a loop's run no process had stopped in 30 s. (A
    child ignores SIGINT where its parent did: see `pass_on_sigint`.)"""
    if proc.poll() is not None:
        return []
    try:
        os.killpg(proc.pid, signum)
        proc.wait(timeout=grace_seconds)
        return []
    except subprocess.TimeoutExpired:
        survivors = group_members(proc.pid)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return survivors
    except ProcessLookupError:  # it exited between the poll and the signal
        proc.wait()
        return []


def pass_on_sigint() -> None:
    """Let the children this process starts from now on take SIGINT. A process started with SIGINT ignored (a `&`
    job of a non-interactive shell, `nohup`, CI) passes the ignoring on to every program it runs, and `dg dev`
    then ignores the SIGINT that stops it (measured: no process of the group had stopped 10 s after it). A
    handled signal is reset to its default in the child, so handling it here (Python's own KeyboardInterrupt)
    is enough. From the main thread only, where Python allows it."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)


def group_members(pgid: int) -> list[str]:
    """The command lines of the live processes in process group `pgid` (from /proc; none where there is none)."""
    members = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            if os.getpgid(int(entry)) == pgid:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    members.append(f.read().replace(b"\0", b" ").decode(errors="replace").strip())
        except (OSError, ProcessLookupError):
            continue
    return members
