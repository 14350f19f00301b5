"""The ``[web]`` settings of the worklist and the check that refuses an exposed one without a token."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class WebConfigError(ValueError):
    """The [web] settings would expose the worklist unsafely."""


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_web_config(host: str, token: str, users: dict[str, str] | None = None,
                     trusted_user_header: str = "") -> None:
    """Refuse an exposed worklist without a login (patient films are behind it): a token,
    per-user tokens or a trusted reverse proxy's user header."""
    if not is_loopback(host) and not (token or users or trusted_user_header):
        raise WebConfigError(
            f"[web] host = {host!r} is not a loopback address: set [web] token or user_tokens "
            "(or CXR_TRIAGE__WEB__TOKEN), or trusted_user_header behind a reverse proxy, so that "
            "the worklist needs a login, or bind it to 127.0.0.1"
        )


def parse_user_tokens(entries: list[str]) -> dict[str, str]:
    """``["alice:TOKEN", ...]`` -> {token: user}; ValueError naming the bad entry (never the
    token)."""
    out: dict[str, str] = {}
    for n, entry in enumerate(entries, start=1):
        user, sep, token = str(entry).partition(":")
        user = user.strip()
        if not sep or not USER_NAME.fullmatch(user) or len(token) < MIN_TOKEN_LENGTH:
            raise ValueError(f"entry {n} is not 'name:token' (name: letters, digits, ._@-; "
                             f"token at least {MIN_TOKEN_LENGTH} characters)")
        if token in out:
            raise ValueError(f"entry {n} reuses another user's token")
        out[token] = user
    return out


USER_NAME = re.compile(r"[A-Za-z0-9._@-]{1,64}")
MIN_TOKEN_LENGTH = 16


@dataclass
class WebSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    token: str = ""
    max_wait_s: float = 120 * 60.0
    refresh_s: int = 30
    max_rows: int = 500
    state_dir: Path | None = None
    #: per-user tokens {token: user name}: a named login, recorded with feedback
    users: dict[str, str] = field(default_factory=dict)
    #: the header a trusted reverse proxy puts the authenticated user in ("" : none) ...
    trusted_user_header: str = ""
    #: ... honoured only on requests from these addresses
    trusted_proxies: tuple[str, ...] = ("127.0.0.1", "::1")
    #: HTTPS: certificate and key files (off loopback the worklist should be served over TLS)
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @property
    def login_required(self) -> bool:
        return bool(self.token or self.users or self.trusted_user_header)

    @classmethod
    def from_config(cls, cfg: Any) -> "WebSettings":
        from cxr_triage.config import resolve_path

        web = cfg.web
        return cls(
            host=web.host,
            port=web.port,
            token=web.token,
            max_wait_s=float(web.max_wait_likely_normal_min) * 60.0,
            refresh_s=int(web.refresh_s),
            max_rows=int(web.max_rows),
            state_dir=resolve_path(cfg, cfg.node.state_dir),
            users=parse_user_tokens(list(web.user_tokens)),
            trusted_user_header=str(web.trusted_user_header),
            trusted_proxies=tuple(web.trusted_proxies),
            tls_cert=resolve_path(cfg, web.tls_cert) if web.tls_cert else None,
            tls_key=resolve_path(cfg, web.tls_key) if web.tls_key else None,
        )
