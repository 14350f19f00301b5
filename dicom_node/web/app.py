"""The reading-room worklist, its JSON API and the operators' ``/metrics``, served by the node.

``create_app`` builds the FastAPI app over a :class:`~cxr_triage.dicom_node.web.worklist.WorklistSource`
(or the node's job store, adapted by ``store_adapter``); ``start_web`` runs it with uvicorn in a
background thread of the node process and returns a handle with ``stop()``.

Access: bound to 127.0.0.1 by default. When ``[web] token`` is set every page, the API and
``/metrics`` need it (``Authorization: Bearer <token>`` or the login cookie); exposing the
server on a non-loopback address without a token is refused at start.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import logging
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import parse_qs, quote

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from prometheus_client.registry import Collector
from pydantic import BaseModel, Field

from cxr_triage.dicom_node.store import heatmaps
from cxr_triage.dicom_node.web import film_render, metrics
from cxr_triage.dicom_node.web.worklist import (
    PLAIN_DECISION,
    PLAIN_REASON,
    FilmEntry,
    StudyEntry,
    WorklistSource,
    band,
    filter_studies,
    order_worklist,
)

log = logging.getLogger(__name__)

COOKIE = "cxr_triage_session"
DECISION_FILTERS = ("suspicious", "not_assessable", "likely_normal", "pending")


class WebConfigError(ValueError):
    """The [web] settings would expose the worklist unsafely."""


# ----------------------------------------------------------------------------------------- API
class FilmOut(BaseModel):
    """One image of the study and its own triage result."""

    sop_instance_uid: str
    series_instance_uid: str | None = None
    sop_class_uid: str | None = None
    decision: str | None = Field(None, description="likely_normal | suspicious | not_assessable; null while pending")
    decision_text: str
    score: float | None = Field(None, description="calibrated probability that the film is abnormal")
    threshold: float | None = None
    operating_point: str | None = None
    reason: str | None = Field(None, description="coded not-assessable reason")
    reason_text: str | None = None
    heatmap_available: bool = False
    image_url: str | None = None
    heatmap_url: str | None = None


class DeliveryOut(BaseModel):
    """One delivery attempt of the result, or its current state."""

    time: dt.datetime
    destination: str
    outcome: str
    detail: str = ""


class StudySummaryOut(BaseModel):
    """A worklist row."""

    rank: int = Field(description="1-based position in the reading order")
    band: str = Field(description="overdue | suspicious | not_assessable | pending | likely_normal")
    study_instance_uid: str
    decision: str = Field(description="likely_normal | suspicious | not_assessable | pending")
    decision_text: str
    score: float | None = None
    received_at: dt.datetime
    triaged_at: dt.datetime | None = None
    wait_minutes: float = Field(description="minutes since the first instance was received")
    overdue: bool = Field(description="past the maximum wait: moved to the top whatever the decision")
    delivery_status: str
    n_instances: int
    url: str
    api_url: str
    thumbnail_url: str | None = None


class WorklistOut(BaseModel):
    generated_at: dt.datetime
    max_wait_minutes: float
    count: int
    studies: list[StudySummaryOut]


class StudyDetailOut(StudySummaryOut):
    """A study with per-image detail, the result SR in plain words and its delivery history."""

    model_name: str | None = None
    model_version: str | None = None
    reason: str | None = None
    films: list[FilmOut]
    deliveries: list[DeliveryOut]
    result_summary: list[str] = Field(
        default_factory=list, description="what the result SR states, in plain sentences (read back from the SR)")
    result_sr: list[dict[str, Any]] | None = Field(
        None, description="the result SR's whole content tree as {depth, concept, value} lines")


# ------------------------------------------------------------------------------------- helpers
def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_web_config(host: str, token: str) -> None:
    """Refuse an exposed worklist without a token (patient films are behind it)."""
    if not is_loopback(host) and not token:
        raise WebConfigError(
            f"[web] host = {host!r} is not a loopback address: set [web] token "
            "(or CXR_TRIAGE__WEB__TOKEN) so that the worklist needs a login, or bind it to 127.0.0.1"
        )


def _wait_text(minutes: float) -> str:
    """Waiting time the way a reading room says it."""
    if minutes < 1:
        return f"{minutes * 60:.0f} s"
    if minutes < 120:
        return f"{minutes:.0f} min"
    return f"{int(minutes // 60)} h {int(minutes % 60):02d} min"


def _utc(ts: float | None) -> dt.datetime | None:
    return None if ts is None else dt.datetime.fromtimestamp(ts, tz=dt.timezone.utc)


def _local(ts: float | None) -> str:
    return "" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _day_bounds(date_from: dt.date | None, date_to: dt.date | None) -> tuple[float | None, float | None]:
    """Inclusive local-calendar days -> [since, until) Unix seconds."""
    since = time.mktime(date_from.timetuple()) if date_from else None
    until = time.mktime((date_to + dt.timedelta(days=1)).timetuple()) if date_to else None
    return since, until


def _session_value(token: str) -> str:
    return hmac.new(token.encode(), b"cxr-triage-web-session", hashlib.sha256).hexdigest()


def _display_film(entry: StudyEntry) -> FilmEntry | None:
    """The film that represents the study: the highest-scoring assessed one, else the first."""
    films = [f for f in entry.films if f.spool_path]
    scored = [f for f in films if f.score is not None]
    if scored:
        return max(scored, key=lambda f: f.score)
    return films[0] if films else None


@dataclass
class WebSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    token: str = ""
    max_wait_s: float = 120 * 60.0
    refresh_s: int = 30
    max_rows: int = 500
    state_dir: Path | None = None

    @classmethod
    def from_config(cls, cfg: Any) -> "WebSettings":
        from cxr_triage.config import resolve_path

        web = cfg.web
        return cls(
            host=web.host,
            port=web.port,
            token=web.token,
            max_wait_s=float(web.max_wait_likely_normal_min) * 60.0,
            refresh_s=int(web.get("refresh_s", 30)),
            max_rows=int(web.get("max_rows", 500)),
            state_dir=resolve_path(cfg, cfg.node.state_dir),
        )


# ------------------------------------------------------------------------------------------ app
def create_app(store: Any, cfg: Any = None, *, settings: WebSettings | None = None,
               model_info: Callable[[], dict[str, str]] | dict[str, str] | None = None,
               collectors: Iterable[Collector] = (),
               clock: Callable[[], float] = time.time) -> FastAPI:
    """The worklist app over ``store`` (a WorklistSource, or the node's job store).

    ``cfg`` (the validated Config) supplies ``[web]`` and the state dir unless ``settings``
    is given. ``model_info`` (name, version, operating point) labels ``cxr_triage_model_info``;
    ``collectors`` are further Prometheus collectors for ``/metrics`` (e.g. drift monitoring).
    """
    if settings is None:
        settings = WebSettings.from_config(cfg) if cfg is not None else WebSettings()
    check_web_config(settings.host, settings.token)
    source: WorklistSource = _as_source(store, settings)
    if model_info is None and callable(getattr(source, "model_info", None)):
        model_info = source.model_info
    registry = metrics.build_registry(source, model_info, extra=collectors)
    session = _session_value(settings.token) if settings.token else ""

    app = FastAPI(
        title="cxr-triage worklist",
        version=_package_version(),
        description="Triage results of the cxr-triage DICOM node, in reading order. "
                    "AI triage output for prioritisation only: every study still needs a radiologist's read.",
    )
    app.state.source = source
    app.state.settings = settings
    app.state.registry = registry
    pkg = resources.files("cxr_triage.dicom_node.web")
    templates = Jinja2Templates(directory=str(pkg / "templates"))
    templates.env.globals.update(plain_decision=PLAIN_DECISION, plain_reason=PLAIN_REASON, local_time=_local,
                                 wait_text=_wait_text)
    app.mount("/static", StaticFiles(directory=str(pkg / "static")), name="static")

    def authorised(request: Request) -> bool:
        if not settings.token:
            return True
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer ") and hmac.compare_digest(auth[7:].strip(), settings.token):
            return True
        return hmac.compare_digest(request.cookies.get(COOKIE, ""), session)

    def require_login(request: Request) -> None:
        if authorised(request):
            return
        wants_html = "text/html" in request.headers.get("accept", "") and not request.url.path.startswith(("/api", "/metrics"))
        if wants_html:
            target = quote(request.url.path + (f"?{request.url.query}" if request.url.query else ""))
            raise HTTPException(status_code=303, headers={"Location": f"/login?next={target}"})
        raise HTTPException(status_code=401, detail="login required", headers={"WWW-Authenticate": "Bearer"})

    guard = [Depends(require_login)]

    # -------------------------------------------------------------- shared view-model
    def summary(rank: int, band_name: str, e: StudyEntry, now: float) -> StudySummaryOut:
        uid = e.study_instance_uid
        has_image = bool(e.films) or e.n_instances > 0  # list rows carry no films: checked on request
        return StudySummaryOut(
            rank=rank, band=band_name, study_instance_uid=uid, decision=e.status,
            decision_text=PLAIN_DECISION.get(e.status, e.status), score=e.score,
            received_at=_utc(e.received_at), triaged_at=_utc(e.triaged_at),
            wait_minutes=round(e.wait_s(now) / 60.0, 1), overdue=band_name == "overdue",
            delivery_status=e.delivery_status, n_instances=e.n_instances or len(e.films),
            url=f"/studies/{uid}", api_url=f"/api/studies/{uid}",
            thumbnail_url=f"/studies/{uid}/thumbnail.png" if has_image else None,
        )

    def worklist(decision: list[str] | None, date_from: dt.date | None, date_to: dt.date | None,
                 limit: int | None) -> tuple[float, list[StudySummaryOut]]:
        now = clock()
        since, until = _day_bounds(date_from, date_to)
        entries = filter_studies(source.list_studies(since, until), decision)
        ordered = order_worklist(entries, now, settings.max_wait_s)
        cap = min(limit or settings.max_rows, settings.max_rows)
        return now, [summary(i + 1, b, e, now) for i, (b, e) in enumerate(ordered[:cap])]

    def film_out(e: StudyEntry, f: FilmEntry) -> FilmOut:
        uid, sop = e.study_instance_uid, f.sop_instance_uid
        has_heat = settings.state_dir is not None and heatmaps.load_heatmap(settings.state_dir, uid, sop) is not None
        return FilmOut(
            sop_instance_uid=sop, series_instance_uid=f.series_instance_uid, sop_class_uid=f.sop_class_uid,
            decision=f.decision, decision_text=PLAIN_DECISION.get(f.decision or "pending", f.decision or ""),
            score=f.score, threshold=f.threshold, operating_point=f.operating_point, reason=f.reason,
            reason_text=(PLAIN_REASON.get(f.reason, f.reason) + (f" ({f.reason_detail})" if f.reason_detail else ""))
            if f.reason else None,
            heatmap_available=has_heat,
            image_url=f"/studies/{uid}/films/{sop}/film.png" if f.spool_path else None,
            heatmap_url=f"/studies/{uid}/films/{sop}/heatmap.png" if has_heat and f.spool_path else None,
        )

    def detail(uid: str) -> StudyDetailOut:
        e = source.get_study(uid)
        if e is None:
            raise HTTPException(status_code=404, detail=f"no study {uid}")
        now = clock()
        # Rank within the whole worklist, so the page says where the study stands.
        ordered = order_worklist(source.list_studies(None, None), now, settings.max_wait_s)
        rank = next((i + 1 for i, (_, x) in enumerate(ordered) if x.study_instance_uid == uid), 0)
        base = summary(rank, band(e, now, settings.max_wait_s), e, now)
        sr, said = None, []
        if e.result_path and Path(e.result_path).is_file():
            try:
                import pydicom

                from cxr_triage.dicom_node.results.sr_plain import sr_lines, sr_summary

                ds = pydicom.dcmread(e.result_path)
                sr = [vars(line) for line in sr_lines(ds)]
                said = sr_summary(ds)
            except Exception:  # an unreadable SR must not hide the rest of the page
                log.warning("study page: result SR unreadable", extra={"study_uid": uid}, exc_info=True)
        return StudyDetailOut(
            **base.model_dump(), model_name=e.model_name, model_version=e.model_version,
            reason=e.reason, films=[film_out(e, f) for f in e.films],
            deliveries=[DeliveryOut(time=_utc(d.time), destination=d.destination, outcome=d.outcome,
                                    detail=d.detail) for d in e.deliveries],
            result_sr=sr, result_summary=said,
        )

    def film_of(uid: str, sop: str) -> FilmEntry:
        e = source.get_study(uid)
        f = next((f for f in (e.films if e else []) if f.sop_instance_uid == sop), None)
        if f is None or not f.spool_path or not Path(f.spool_path).is_file():
            raise HTTPException(status_code=404, detail="no such image")
        return f

    def png(img) -> Response:
        return Response(film_render.png_bytes(img), media_type="image/png",
                        headers={"Cache-Control": "private, max-age=300"})

    # ------------------------------------------------------------------------ JSON API
    @app.get("/api/studies", response_model=WorklistOut, tags=["api"], dependencies=guard,
             summary="Studies in reading order")
    def api_studies(
        decision: list[str] | None = Query(None, description=f"keep only these ({', '.join(DECISION_FILTERS)})"),
        date_from: dt.date | None = Query(None, description="first day received (local calendar, inclusive)"),
        date_to: dt.date | None = Query(None, description="last day received (inclusive)"),
        limit: int | None = Query(None, ge=1, le=10000),
    ) -> WorklistOut:
        """Overdue studies (past the maximum wait) first, then suspicious, not assessable, being
        triaged, likely normal; oldest first within each band."""
        now, rows = worklist(decision, date_from, date_to, limit)
        return WorklistOut(generated_at=_utc(now), max_wait_minutes=settings.max_wait_s / 60.0,
                           count=len(rows), studies=rows)

    @app.get("/api/studies/{study_uid}", response_model=StudyDetailOut, tags=["api"], dependencies=guard,
             summary="One study with per-image results, SR content and delivery history",
             responses={404: {"description": "unknown study"}})
    def api_study(study_uid: str) -> StudyDetailOut:
        return detail(study_uid)

    # ------------------------------------------------------------------------- metrics
    @app.get("/metrics", tags=["operations"], dependencies=guard, response_class=Response,
             summary="Prometheus metrics (text exposition format)")
    def metrics_endpoint() -> Response:
        return Response(metrics.render(registry), media_type=metrics.CONTENT_TYPE)

    @app.get("/healthz", tags=["operations"], include_in_schema=True, summary="Liveness")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    # --------------------------------------------------------------------------- pages
    @app.get("/", response_class=HTMLResponse, include_in_schema=False, dependencies=guard)
    def page_worklist(request: Request, date_from: str = "", date_to: str = ""):
        decision = [d for d in request.query_params.getlist("decision") if d in DECISION_FILTERS]
        date_from, date_to = _form_date(date_from), _form_date(date_to)  # the form sends "" for none
        now, rows = worklist(decision, date_from, date_to, None)
        return templates.TemplateResponse(request, "worklist.html", {
            "rows": rows, "now": now, "decision": decision, "filters": DECISION_FILTERS,
            "date_from": date_from.isoformat() if date_from else "",
            "date_to": date_to.isoformat() if date_to else "",
            "refresh_s": settings.refresh_s, "max_wait_min": settings.max_wait_s / 60.0,
        })

    @app.get("/studies/{study_uid}", response_class=HTMLResponse, include_in_schema=False, dependencies=guard)
    def page_study(request: Request, study_uid: str):
        study = detail(study_uid)
        return templates.TemplateResponse(request, "study.html", {"s": study, "refresh_s": settings.refresh_s})

    @app.get("/studies/{study_uid}/thumbnail.png", include_in_schema=False, dependencies=guard)
    def thumbnail(study_uid: str, size: int = Query(160, ge=32, le=1024)):
        e = source.get_study(study_uid)
        f = _display_film(e) if e else None
        if f is None or not Path(f.spool_path).is_file():
            raise HTTPException(status_code=404, detail="no image")
        heat = heatmaps.load_heatmap(settings.state_dir, study_uid, f.sop_instance_uid) if settings.state_dir else None
        return png(film_render.composite(film_render.film_image(f.spool_path, size), heat))

    @app.get("/studies/{study_uid}/films/{sop_uid}/film.png", include_in_schema=False, dependencies=guard)
    def film_png(study_uid: str, sop_uid: str, size: int = Query(768, ge=32, le=1024)):
        f = film_of(study_uid, sop_uid)
        return png(film_render.film_image(f.spool_path, size))

    @app.get("/studies/{study_uid}/films/{sop_uid}/heatmap.png", include_in_schema=False, dependencies=guard)
    def heatmap_png(study_uid: str, sop_uid: str, size: int = Query(768, ge=32, le=1024)):
        f = film_of(study_uid, sop_uid)
        heat = heatmaps.load_heatmap(settings.state_dir, study_uid, sop_uid) if settings.state_dir else None
        if heat is None:
            raise HTTPException(status_code=404, detail="no heatmap for this image")
        film = film_render.film_image(f.spool_path, size)
        return png(film_render.heat_overlay(heat, film.size))

    # --------------------------------------------------------------------------- login
    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_form(request: Request, next: str = "/", failed: int = 0):
        return templates.TemplateResponse(request, "login.html", {"next": _safe_next(next), "failed": bool(failed)})

    @app.post("/login", include_in_schema=False)
    async def login(request: Request):
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        given = (form.get("token") or [""])[0]
        nxt = _safe_next((form.get("next") or ["/"])[0])
        if not settings.token or not hmac.compare_digest(given, settings.token):
            log.warning("web login refused", extra={"client": request.client.host if request.client else ""})
            return RedirectResponse(f"/login?failed=1&next={quote(nxt)}", status_code=303)
        resp = RedirectResponse(nxt, status_code=303)
        resp.set_cookie(COOKIE, session, httponly=True, samesite="strict", secure=request.url.scheme == "https")
        return resp

    @app.get("/logout", include_in_schema=False)
    def logout():
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(COOKIE)
        return resp

    @app.exception_handler(HTTPException)
    async def http_errors(request: Request, exc: HTTPException):
        if exc.status_code == 303:
            return RedirectResponse(exc.headers["Location"], status_code=303)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    return app


def _form_date(text: str) -> dt.date | None:
    try:
        return dt.date.fromisoformat(text) if text else None
    except ValueError:
        return None


def _safe_next(target: str) -> str:
    """Only same-site paths after login (no open redirect)."""
    return target if target.startswith("/") and not target.startswith("//") else "/"


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("cxr-triage")
    except Exception:  # pragma: no cover
        return "0"


def _as_source(store: Any, settings: WebSettings) -> WorklistSource:
    """The node's JobStore (it has ``counts``/``oldest_pending``) is adapted; anything else
    is taken as a WorklistSource already."""
    from cxr_triage.dicom_node.store.jobs import JobStore
    from cxr_triage.dicom_node.web.store_adapter import StoreWorklist

    if isinstance(store, JobStore):
        return StoreWorklist(store, state_dir=settings.state_dir)
    return store


# --------------------------------------------------------------------------------- server
class WebServer:
    """A running uvicorn server in a daemon thread; ``stop()`` shuts it down."""

    def __init__(self, app: FastAPI, host: str, port: int):
        import uvicorn

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))  # bind now: a busy port fails the caller, not a thread
        self._sock.listen(128)
        self.host = host
        self.port = self._sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=3)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        name="cxr-triage-web", daemon=True)
        self.app = app

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

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
              collectors: Iterable[Collector] = (), settings: WebSettings | None = None) -> WebServer | None:
    """Start the worklist for a node when ``[web] enabled``; None when disabled.

    Raises WebConfigError (exposed without a token) or OSError (port busy) so the node can
    report the problem at start.
    """
    if cfg is not None and not cfg.web.enabled and settings is None:
        return None
    settings = settings or WebSettings.from_config(cfg)
    app = create_app(store, cfg, settings=settings, model_info=model_info, collectors=collectors)
    return WebServer(app, settings.host, settings.port).start()


def new_token() -> str:
    """A strong token for ``[web] token`` (``python -c 'from cxr_triage.dicom_node.web.app import new_token; print(new_token())'``)."""
    return secrets.token_urlsafe(24)
