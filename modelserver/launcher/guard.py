"""`python guard.py LAUNCHER_PID COMMAND...`: run COMMAND so that nothing it starts outlives the
launcher, even a launcher killed with SIGKILL (which no handler sees).

The kernel tells a process that its parent died (PR_SET_PDEATHSIG), but only a direct child:
TorchServe's `torchserve` script starts Java, which starts the Python workers, and none of them
is the launcher's child. The guard is. It runs COMMAND in its own process group (the launcher
starts it as a group leader) and, told that the launcher died, kills the whole group.

Run as a file, not a module: it imports only the standard library, whatever the child's cwd.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys

PR_SET_PDEATHSIG = 1  # linux/prctl.h
LAUNCHER_DIED = signal.SIGUSR1


def _end_the_group(_signum: int = 0, _frame: object = None) -> None:
    os.killpg(0, signal.SIGKILL)


def _let_the_child_handle_it(_signum: int, _frame: object) -> None:
    """SIGTERM reaches the whole group on an orderly stop: the command stops itself and the
    guard exits with it. (A handler, not SIG_IGN: an ignored signal stays ignored after exec.)"""


def main(argv: list[str]) -> int:
    """Start the command, wait for it, exit with its status."""
    launcher, command = int(argv[0]), argv[1:]
    signal.signal(LAUNCHER_DIED, _end_the_group)
    signal.signal(signal.SIGTERM, _let_the_child_handle_it)
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, LAUNCHER_DIED, 0, 0, 0) != 0:
        print(f"guard: prctl failed ({ctypes.get_errno()})", file=sys.stderr)
    if os.getppid() != launcher:  # the launcher died before the kernel could be asked
        _end_the_group()
    child = subprocess.Popen(command)  # pylint: disable=consider-using-with
    while True:
        try:
            code = child.wait()
            break
        except InterruptedError:
            continue
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
