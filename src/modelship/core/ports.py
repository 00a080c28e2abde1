"""Ports on this machine for the servers modelship starts: a free one, or the one asked for."""

from __future__ import annotations

import socket

from modelship.core.errors import InputError


class PortInUse(InputError):
    """A port that a setting names is held by something else."""


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could bind ``port`` now (as servers do, past TIME_WAIT connections)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port nothing holds now, picked by the kernel."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pick_port(
    wanted: int | None,
    setting: str = "loadtest.port",
    fix: str = "leave loadtest.port empty to pick a free port",
) -> int:
    """``wanted`` if it is free (named by ``setting`` when it is not), else any free port."""
    if wanted is None:
        return free_port()
    if not port_free(wanted):
        raise PortInUse(
            f"port {wanted} ({setting}) is already in use by another process",
            hint=f"stop what holds it, or {fix}",
        )
    return wanted
