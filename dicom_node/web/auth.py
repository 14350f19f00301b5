"""Access to the worklist: the ``[web] token`` as a Bearer header or a session cookie.

``require_login`` guards every page, the API and ``/metrics`` when a token is set (a browser
asking for a page is sent to ``/login``, anything else gets 401); ``router`` holds the
``POST /login`` and ``/logout`` routes (the login form itself is a page, in ``routes_pages``).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from cxr_triage.dicom_node.web.deps import Settings, get_settings
from cxr_triage.dicom_node.web.settings import WebSettings

log = logging.getLogger(__name__)

COOKIE = "cxr_triage_session"

router = APIRouter()


def new_token() -> str:
    """A strong token for ``[web] token`` (``python -c 'from cxr_triage.dicom_node.web.app import new_token; print(new_token())'``)."""
    return secrets.token_urlsafe(24)


def session_value(token: str) -> str:
    """The login cookie's value for ``token`` (never the token itself)."""
    return hmac.new(token.encode(), b"cxr-triage-web-session", hashlib.sha256).hexdigest()


def safe_next(target: str) -> str:
    """Only same-site paths after login (no open redirect)."""
    return target if target.startswith("/") and not target.startswith("//") else "/"


def authorised(request: Request, settings: WebSettings) -> bool:
    if not settings.token:
        return True
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer ") and hmac.compare_digest(auth[7:].strip(), settings.token):
        return True
    return hmac.compare_digest(request.cookies.get(COOKIE, ""), session_value(settings.token))


def require_login(request: Request) -> None:
    if authorised(request, get_settings(request)):
        return
    wants_html = "text/html" in request.headers.get("accept", "") and not request.url.path.startswith(("/api", "/metrics"))
    if wants_html:
        target = quote(request.url.path + (f"?{request.url.query}" if request.url.query else ""))
        raise HTTPException(status_code=303, headers={"Location": f"/login?next={target}"})
    raise HTTPException(status_code=401, detail="login required", headers={"WWW-Authenticate": "Bearer"})


LOGIN_REQUIRED = [Depends(require_login)]


async def http_errors(request: Request, exc: HTTPException) -> Response:
    """HTTPException as JSON; the 303 that ``require_login`` raises for a browser as a redirect."""
    if exc.status_code == 303:
        return RedirectResponse((exc.headers or {})["Location"], status_code=303)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


@router.post("/login", include_in_schema=False)
async def login(request: Request, settings: Settings) -> RedirectResponse:
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    given = (form.get("token") or [""])[0]
    nxt = safe_next((form.get("next") or ["/"])[0])
    if not settings.token or not hmac.compare_digest(given, settings.token):
        log.warning("web login refused", extra={"client": request.client.host if request.client else ""})
        return RedirectResponse(f"/login?failed=1&next={quote(nxt)}", status_code=303)
    resp = RedirectResponse(nxt, status_code=303)
    resp.set_cookie(COOKIE, session_value(settings.token), httponly=True, samesite="strict",
                    secure=request.url.scheme == "https")
    return resp


@router.get("/logout", include_in_schema=False)
def logout() -> RedirectResponse:
    resp = RedirectResponse("/login", status_code=303)
    resp.delete_cookie(COOKIE)
    return resp
