"""A request a client got wrong is one log line, not a server's traceback.

aiohttp logs a malformed request line or header (``Content-Length: abc``, a line over its limit)
as "Error handling request" at ERROR with the parser's traceback, then answers 400 as it should.
Nothing failed in the server; on a public port such lines come by the hundred and bury the
tracebacks that matter. :func:`one_line` turns them into one WARNING line that still says who
sent what and which status went back. The Bento's own server has the same filter in
``modelship.bentos.service`` (a Bento ships only its ``bentos`` folder).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

#: the exception a server logged -> (the 4xx it answered, what was wrong), or None: a real
#: fault, logged as it is
FaultOf = Callable[[BaseException], "tuple[int, str] | None"]


class ClientFault(logging.Filter):
    """Rewrites a record whose exception ``fault_of`` calls a client's fault to one line."""

    def __init__(self, fault_of: FaultOf) -> None:
        super().__init__()
        self._fault_of = fault_of

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        fault = self._fault_of(exc) if exc is not None else None
        if fault is None or not 400 <= fault[0] < 500:
            return True
        args = (record.getMessage(), *fault)
        record.msg, record.args = "%s: answered %d, the request was at fault: %s", args
        record.exc_info, record.exc_text = None, None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def aiohttp_fault(exc: BaseException) -> tuple[int, str] | None:
    """The 4xx aiohttp's parser answered for ``exc``, and its message; None for anything else."""
    from aiohttp.http_exceptions import HttpProcessingError

    if isinstance(exc, HttpProcessingError):
        return exc.code, exc.message.strip().replace("\n", " ")
    return None


def one_line(logger: str = "aiohttp.server", fault_of: FaultOf = aiohttp_fault) -> None:
    """Install :class:`ClientFault` on ``logger`` (once)."""
    target = logging.getLogger(logger)
    if not any(isinstance(f, ClientFault) for f in target.filters):
        target.addFilter(ClientFault(fault_of))
