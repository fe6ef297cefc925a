"""Processes of the local stack end with whoever started them: signals, and the parent's death."""
from __future__ import annotations

import ctypes
import signal
import socket
import sys

PORT_IN_USE = 3  # the function host's exit code when its port is taken (the dev host then does not restart it)


def die_with_parent() -> None:
    """``preexec_fn`` of a child: Linux sends it SIGTERM when the process that started it dies, even by SIGKILL."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def port_free(host: str, port: int) -> bool:
    """Can ``port`` be bound on ``host`` right now (0 always can)?"""
    if port == 0:
        return True
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True
