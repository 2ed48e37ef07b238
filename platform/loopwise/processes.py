"""Child processes started in their own session (a server and the workers it forks), stopped as one group."""

from __future__ import annotations

import os
import signal
import subprocess


def stop_group(proc: subprocess.Popen, grace_seconds: float = 30) -> None:
    """Stop `proc`'s process group: SIGTERM, then SIGKILL after `grace_seconds`; reaped either way."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:  # it exited between the poll and the signal
        proc.wait()
