"""Access to the worklist: a token as a Bearer header or a session cookie, or the user a
trusted reverse proxy authenticated.

- ``[web] token``: one shared token (a login without a name);
- ``[web] user_tokens``: ``name:token`` per radiologist, a *named* login: what a user does
  (feedback on an AI result) is recorded under that name;
- ``[web] trusted_user_header`` (e.g. ``X-Remote-User``): the user name a reverse proxy that
  did the authentication puts in a header, honoured only on requests from
  ``[web] trusted_proxies``.

``require_login`` guards every page, the API and ``/metrics`` when any of these is set (a
browser asking for a page is sent to ``/login``, anything else gets 401); ``current_user``
names who is asking (None for the shared token or no login). ``router`` holds the
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


def _tokens(settings: WebSettings) -> list[tuple[str, str | None]]:
    """(token, user or None for the shared token), every login token there is."""
    out: list[tuple[str, str | None]] = [(t, u) for t, u in settings.users.items()]
    if settings.token:
        out.append((settings.token, None))
    return out


def _login(request: Request, settings: WebSettings) -> tuple[bool, str | None]:
    """(authorised, user name): a Bearer token or session cookie of a token, or the trusted
    proxy's user header."""
    header = settings.trusted_user_header
    if header and request.client is not None and request.client.host in settings.trusted_proxies:
        proxied = request.headers.get(header, "").strip()
        if proxied:
            return True, proxied[:64]
    auth = request.headers.get("authorization", "")
    bearer = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
    cookie = request.cookies.get(COOKIE, "")
    for token, named in _tokens(settings):
        if (bearer and hmac.compare_digest(bearer, token)) or (
                cookie and hmac.compare_digest(cookie, session_value(token))):
            return True, named
    return not settings.login_required, None


def authorised(request: Request, settings: WebSettings) -> bool:
    return _login(request, settings)[0]


def current_user(request: Request) -> str | None:
    """The named user behind this request (a per-user token or the trusted proxy's header);
    None for the shared token or when no login is configured."""
    return _login(request, get_settings(request))[1]


# what a client that is not a person (a STOW-RS sender, a script, Prometheus) must send
AUTH_REQUIRED = ("authentication required: send an 'Authorization: Bearer <token>' header with a"
                 " [web] token or user_tokens token (docs/operations.md, Worklist and metrics)")


def require_login(request: Request) -> None:
    if authorised(request, get_settings(request)):
        return
    wants_html = "text/html" in request.headers.get("accept", "") and not request.url.path.startswith(("/api", "/metrics"))
    if wants_html:
        target = quote(request.url.path + (f"?{request.url.query}" if request.url.query else ""))
        raise HTTPException(status_code=303, headers={"Location": f"/login?next={target}"})
    raise HTTPException(status_code=401, detail=AUTH_REQUIRED, headers={"WWW-Authenticate": "Bearer"})


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
    match = next((t for t, _ in _tokens(settings) if given and hmac.compare_digest(given, t)), None)
    if match is None:
        log.warning("web login refused", extra={"client": request.client.host if request.client else ""})
        return RedirectResponse(f"/login?failed=1&next={quote(nxt)}", status_code=303)
    resp = RedirectResponse(nxt, status_code=303)
    resp.set_cookie(COOKIE, session_value(match), httponly=True, samesite="strict",
                    secure=request.url.scheme == "https")
    return resp


@router.get("/logout", include_in_schema=False)
def logout() -> RedirectResponse:
    resp = RedirectResponse("/login", status_code=303)
    resp.delete_cookie(COOKIE)
    return resp
