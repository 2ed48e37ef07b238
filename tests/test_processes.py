"""Child process groups (loopwise.processes): what `loopwise loop` and the tests use to stop `dg dev` and the
service, with real processes."""

from __future__ import annotations

import signal
import subprocess
import sys

from loopwise.processes import pass_on_sigint, stop_group

# The sleeper takes SIGTERM by default whatever it inherited: seen once in CI, a pytest worker passed SIGTERM on
# ignored or blocked (a disposition and a mask survive exec), and the sleeper outlived the grace. SIGINT is left
# as inherited: that inheritance is what the first test is about.
SLEEPER = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_DFL); "
           "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM}); print('up', flush=True); time.sleep(60)")

# A parent started with SIGINT ignored (as a `&` job of a shell, or under nohup) that starts a child in its own
# group, as the loop starts `dg dev`, and stops it with SIGINT as the loop does; prints how the child ended and
# how many of its group had to be killed after the grace.
PARENT = f"""
import signal, subprocess, sys
from loopwise.processes import pass_on_sigint, stop_group
SLEEPER = {SLEEPER!r}
if sys.argv[1] == "pass":
    pass_on_sigint()
child = subprocess.Popen([sys.executable, "-c", SLEEPER], stdout=subprocess.PIPE, start_new_session=True)
child.stdout.readline()  # running its own code: a signal before its exec would meet the parent's handlers
killed = stop_group(child, 5, signal.SIGINT)
print(child.returncode, len(killed))
"""


def _parent(mode: str) -> tuple[int, int]:
    done = subprocess.run([sys.executable, "-c", PARENT, mode], capture_output=True, text=True, timeout=60,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert done.returncode == 0, done.stderr
    code, killed = done.stdout.split()
    return int(code), int(killed)


def test_a_child_takes_sigint_even_where_its_parent_was_started_ignoring_it() -> None:
    code, killed = _parent("pass")
    assert code != -signal.SIGKILL and killed == 0  # stopped by the SIGINT, not killed after the grace
    # Without it the child inherits the ignoring: only the SIGKILL after the grace stops it, and it is named.
    code, killed = _parent("inherit")
    assert code == -signal.SIGKILL and killed == 1


def test_stop_group_names_nothing_for_a_group_that_stops() -> None:
    proc = subprocess.Popen([sys.executable, "-c", SLEEPER], stdout=subprocess.PIPE, start_new_session=True)
    assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
    assert stop_group(proc, 5) == [] and proc.returncode == -signal.SIGTERM
    pass_on_sigint()  # harmless where SIGINT is handled already
    assert signal.getsignal(signal.SIGINT) is not signal.SIG_IGN
