"""The job store unavailable: what the worklist, the study page and the API answer meanwhile.

The store's read side raises ``sqlite3.OperationalError`` when the database cannot be read
now: :class:`~cxr_triage.dicom_node.store.pg.StoreUnavailable` for a PostgreSQL server that is
down, restarting or out of connections, or a locked / unreadable SQLite file. Rather than a
bare 500, the web server answers **503 Service Unavailable** with ``Retry-After`` (RFC 9110
15.6.4, 10.2.3): the JSON API ``{"detail": "job store unavailable: <one-line reason>"}``, a page
a clear banner that says so and refreshes itself, so the worklist comes back by itself once the
database does (every request asks the store again; nothing is cached here).
"""

from __future__ import annotations

import logging
import sqlite3

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from cxr_triage.dicom_node.web.deps import get_settings, get_templates

log = logging.getLogger(__name__)

#: Seconds a client is told to wait before asking again (``Retry-After``; the page's refresh).
RETRY_AFTER_S = 10
#: Paths answered with the banner page (the rest, API, metrics, media, services: JSON).
PAGE_PREFIXES = ("/studies/",)


def reason(exc: BaseException) -> str:
    """The cause in one line of at most 300 characters (libpq's messages run over several
    lines; they name host and port, never the password)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"job store unavailable: {text}"[:300]


def wants_page(request: Request) -> bool:
    """A browser page (the worklist or a study) rather than the API or a service."""
    path = request.url.path
    return request.method == "GET" and (path == "/" or path.startswith(PAGE_PREFIXES))


async def store_unavailable(request: Request, exc: Exception) -> Response:
    """503 for a request the store could not answer: the banner page or one-line JSON."""
    why = reason(exc)
    log.warning("worklist: job store unavailable", extra={"path": request.url.path, "reason": why})
    headers = {"Retry-After": str(RETRY_AFTER_S)}
    if not wants_page(request):
        return JSONResponse({"detail": why}, status_code=503, headers=headers)
    refresh = min(RETRY_AFTER_S, get_settings(request).refresh_s or RETRY_AFTER_S)
    return get_templates(request).TemplateResponse(
        request, "unavailable.html", {"reason": why, "refresh_s": refresh},
        status_code=503, headers=headers)


def install(app: FastAPI) -> None:
    """Answer every ``sqlite3.OperationalError`` a route lets through as :func:`store_unavailable`."""
    app.exception_handler(sqlite3.OperationalError)(store_unavailable)
