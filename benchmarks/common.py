"""What every benchmark records with its figures: the machine, the commit measured, the results file.

Imports nothing heavy: `landing.py` measures its children's peak memory, which counts what the
parent held when it forked.
"""

from __future__ import annotations

import os
import platform as stdlib_platform
import subprocess
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def machine() -> str:
    """Cores, CPU model, memory and kernel, as each entry's `Machine:` line gives them."""
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, {stdlib_platform.system()} {stdlib_platform.release()}"


def commit() -> str:
    """The commit measured; `+dirty` when the working tree has uncommitted changes."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout
    return head + ("+dirty" if dirty.strip() else "")


def load_average() -> str:
    """The 1, 5 and 15-minute load averages: the machine may be shared, and its other work slows a run."""
    return " / ".join(open("/proc/loadavg").read().split()[:3])
