"""Nothing modelship starts outlives it: servers, probes and pipeline steps die with their parent.

A server is started in its own session (so its whole process group can be stopped), which also
means a SIGKILL of modelship, which runs no cleanup, would leave it running and its port bound.
Two mechanisms close that gap, one for each kind of child:

- A process modelship starts directly (a Bento, the gateway, the model probe) is started through
  :func:`tied`: a small launcher asks the kernel to send it SIGTERM when its parent dies
  (Linux ``PR_SET_PDEATHSIG``, kept across ``exec``), then becomes the command. SIGTERM, not
  SIGKILL, so that BentoML's arbiter stops its workers (they run in process groups of their
  own) and the gateway closes its sockets.
- A pipeline step is started by ``kfp.local`` through ``sh -c``, so its parent is a shell that
  survives modelship. The process that runs the pipeline names itself in ``MODELSHIP_LIFELINE``
  (pid and start time, so a reused pid is not mistaken for it); each step watches it
  (:func:`watch_anchor`) and sends itself SIGTERM when it is gone, which stops the servers the
  step started on the way out.

On a cluster neither applies (a pod's containers end with the pod): the variable is not set and
the launcher only runs the command. Outside Linux both are no-ops.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

LIFELINE_ENV = "MODELSHIP_LIFELINE"
_PR_SET_PDEATHSIG = 1


def _start_ticks(pid: int) -> str | None:
    """The process' start time in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may hold spaces: split after it
    return stat.rsplit(")", 1)[-1].split()[19]


def anchor() -> str:
    """This process as a lifeline anchor: ``PID:START_TICKS``."""
    pid = os.getpid()
    return f"{pid}:{_start_ticks(pid) or ''}"


def anchor_alive(value: str) -> bool:
    """Whether the process an anchor names still runs (a malformed anchor counts as alive)."""
    pid_text, _, ticks = value.partition(":")
    if not pid_text.isdigit():
        return True
    now = _start_ticks(int(pid_text))
    if now is None:
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return not os.path.exists("/proc/self/stat")  # no /proc: the pid exists, trust it
    return not ticks or now == ticks


def watch_anchor(interval_s: float = 0.5) -> threading.Thread | None:
    """If ``MODELSHIP_LIFELINE`` names a process, SIGTERM this one once that one is gone."""
    value = os.environ.get(LIFELINE_ENV, "")
    if not value:
        return None

    def watch() -> None:
        while anchor_alive(value):
            time.sleep(interval_s)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=watch, name="modelship-lifeline", daemon=True)
    thread.start()
    return thread


def tied(cmd: list[str]) -> list[str]:
    """``cmd`` started so that it gets SIGTERM when the calling process dies."""
    if not sys.platform.startswith("linux"):
        return cmd
    return [sys.executable, "-m", "modelship.core.lifeline", str(os.getpid()), "--", *cmd]


def _die_with(parent: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the request was made
        sys.exit(0)


def _exec(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] != "--" or not argv[0].isdigit():
        sys.exit("usage: python -m modelship.core.lifeline PARENT_PID -- COMMAND [ARG...]")
    _die_with(int(argv[0]))
    os.execvp(argv[2], argv[2:])


if __name__ == "__main__":
    _exec(sys.argv[1:])
