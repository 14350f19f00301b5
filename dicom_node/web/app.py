"""The reading-room worklist, its JSON API and the operators' ``/metrics``, served by the node.

``create_app`` builds the FastAPI app over a :class:`~cxr_triage.dicom_node.web.worklist.WorklistSource`
(or the node's job store, adapted by ``store_adapter``); ``start_web`` runs it with uvicorn in a
background thread of the node process and returns a handle with ``stop()``.

The routes live in their own modules, as ``APIRouter``s that read the shared state
(``source``, ``settings``, ``registry``, ``templates``, ``clock``) from ``request.app.state``
through :mod:`~cxr_triage.dicom_node.web.deps`: ``routes_api`` (JSON API, ``/metrics``,
``/healthz``), ``routes_pages`` (worklist, study, login form), ``routes_media`` (thumbnail,
film and heatmap PNGs) and ``auth`` (token, session cookie, ``require_login``, login/logout);
the API's response models are in ``schemas``.

Access: bound to 127.0.0.1 by default. When ``[web] token`` is set every page, the API and
``/metrics`` need it (``Authorization: Bearer <token>`` or the login cookie); exposing the
server on a non-loopback address without a token is refused at start.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from importlib import resources
from typing import Any, Callable, Iterable

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.staticfiles import StaticFiles
from prometheus_client.registry import Collector

from cxr_triage.dicom_node.store.queries import configured_node_name
from cxr_triage.dicom_node.web import auth, metrics, routes_api, routes_media, routes_pages, unavailable
from cxr_triage.dicom_node.web.auth import COOKIE, new_token
from cxr_triage.dicom_node.web.schemas import (
    DeliveryOut,
    FilmOut,
    StudyDetailOut,
    StudySummaryOut,
    WorklistOut,
)
from cxr_triage.dicom_node.web.settings import WebConfigError, WebSettings, check_web_config, is_loopback
from cxr_triage.dicom_node.web.views import DECISION_FILTERS
from cxr_triage.dicom_node.web.worklist import WorklistSource

__all__ = [
    "COOKIE", "DECISION_FILTERS", "DeliveryOut", "FilmOut", "StudyDetailOut", "StudySummaryOut",
    "WebConfigError", "WebServer", "WebSettings", "WorklistOut", "check_web_config", "create_app",
    "check_web_tls", "is_loopback", "new_token", "start_web",
]

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ app
def create_app(store: Any, cfg: Any = None, *, settings: WebSettings | None = None,
               model_info: Callable[[], dict[str, str]] | dict[str, str] | None = None,
               collectors: Iterable[Collector] = (),
               clock: Callable[[], float] = time.time, audit: Any = None,
               services: Iterable[APIRouter] = ()) -> FastAPI:
    """The worklist app over ``store`` (a WorklistSource, or the node's job store).

    ``cfg`` (the validated Config) supplies ``[web]`` and the state dir unless ``settings``
    is given. ``model_info`` (name, version, operating point) labels ``cxr_triage_model_info``;
    ``collectors`` are further Prometheus collectors for ``/metrics`` (e.g. drift monitoring).
    ``audit``: the node's audit log (radiologists' feedback is audited there).
    ``services``: further routers behind the same login, the caller named in
    ``request.state.user`` (the node's STOW-RS receiver, ``receive/stow.py``).
    """
    if settings is None:
        settings = WebSettings.from_config(cfg) if cfg is not None else WebSettings()
    check_web_config(settings.host, settings.token, settings.users, settings.trusted_user_header)
    source = _as_source(store, settings)
    source_info = getattr(source, "model_info", None)  # the node's store knows its model
    if model_info is None and callable(source_info):
        model_info = source_info

    app = FastAPI(
        title="cxr-triage worklist",
        version=_package_version(),
        description="Triage results of the cxr-triage DICOM node, in reading order. "
                    "AI triage output for prioritisation only: every study still needs a radiologist's read.",
    )
    app.state.source = source
    app.state.settings = settings
    node_name = configured_node_name(cfg.store) if cfg is not None else ""
    app.state.registry = metrics.build_registry(source, model_info, extra=collectors, node_name=node_name)
    app.state.templates = routes_pages.build_templates()
    app.state.clock = clock
    app.state.audit = audit
    app.mount("/static", StaticFiles(directory=str(resources.files("cxr_triage.dicom_node.web") / "static")),
              name="static")
    for router in (routes_api.router, routes_pages.router, routes_media.router, auth.router):
        app.include_router(router)
    for service in services:
        app.include_router(service, dependencies=[Depends(auth.require_login), Depends(_name_caller)])
    app.exception_handler(HTTPException)(auth.http_errors)
    unavailable.install(app)  # the store down: 503 with a banner / one-line reason
    return app


def _name_caller(request: Request) -> None:
    """``request.state.user``: the named user of a service request (None: shared token)."""
    request.state.user = auth.current_user(request)


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cxr-triage")
    except PackageNotFoundError:  # pragma: no cover
        return "0"


def _as_source(store: Any, settings: WebSettings) -> WorklistSource:
    """The node's job store (its :class:`StudyQueries`) is adapted; anything else is taken
    as a WorklistSource already."""
    from cxr_triage.dicom_node.store.queries import StudyQueries
    from cxr_triage.dicom_node.web.store_adapter import StoreWorklist

    if isinstance(store, StudyQueries):
        return StoreWorklist(store, state_dir=settings.state_dir)
    source: WorklistSource = store
    return source


# --------------------------------------------------------------------------------- server
class WebServer:
    """A running uvicorn server in a daemon thread; ``stop()`` shuts it down."""

    def __init__(self, app: FastAPI, host: str, port: int, *, tls_cert: Any = None, tls_key: Any = None) -> None:
        import uvicorn

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))  # bind now: a busy port fails the caller, not a thread
        self._sock.listen(128)
        self.host = host
        self.port = self._sock.getsockname()[1]
        # access log off: URLs name studies, and the pages carry patient names and IDs
        tls = bool(tls_cert and tls_key)
        self.scheme = "https" if tls else "http"
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=3,
                                ssl_certfile=str(tls_cert) if tls else None,
                                ssl_keyfile=str(tls_key) if tls else None)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        name="cxr-triage-web", daemon=True)
        self.app = app

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def start(self, timeout: float = 10.0) -> "WebServer":
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"web server did not start on {self.url}")
            time.sleep(0.02)
        log.info("worklist serving", extra={"url": self.url})
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)
        try:
            self._sock.close()
        except OSError:
            pass


def start_web(cfg: Any, store: Any, *, model_info: Callable[[], dict[str, str]] | dict[str, str] | None = None,
              collectors: Iterable[Collector] = (), settings: WebSettings | None = None,
              audit: Any = None, services: Iterable[APIRouter] = ()) -> WebServer | None:
    """Start the worklist for a node when ``[web] enabled``; None when disabled.

    Off loopback the worklist shows patient names and IDs, so it is served over HTTPS
    (``[web] tls_cert`` and ``tls_key``) unless a trusted reverse proxy (``[web]
    trusted_user_header``) terminates TLS in front of it.

    Raises WebConfigError (exposed without a login, or without HTTPS) or OSError (port busy,
    unreadable certificate) so the node can report the problem at start.
    """
    if cfg is not None and not cfg.web.enabled and settings is None:
        return None
    settings = settings or WebSettings.from_config(cfg)
    check_web_tls(settings)
    app = create_app(store, cfg, settings=settings, model_info=model_info, collectors=collectors, audit=audit,
                     services=services)
    return WebServer(app, settings.host, settings.port, tls_cert=settings.tls_cert,
                     tls_key=settings.tls_key).start()


def check_web_tls(settings: WebSettings) -> None:
    """Refuse plain HTTP off loopback (patient names and IDs on the page), unless a trusted
    reverse proxy does TLS; refuse half a TLS configuration."""
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise WebConfigError("[web] tls_cert and tls_key go together: set both (HTTPS) or neither")
    if not is_loopback(settings.host) and not settings.tls_cert and not settings.trusted_user_header:
        raise WebConfigError(
            f"[web] host = {settings.host!r} is not a loopback address: the worklist shows patient names "
            "and IDs, so set [web] tls_cert and tls_key to serve it over HTTPS (or put it behind a TLS "
            "reverse proxy with [web] trusted_user_header), or bind it to 127.0.0.1")

