"""The ``[web]`` settings of the worklist and the check that refuses an exposed one without a token."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
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


def check_web_config(host: str, token: str) -> None:
    """Refuse an exposed worklist without a token (patient films are behind it)."""
    if not is_loopback(host) and not token:
        raise WebConfigError(
            f"[web] host = {host!r} is not a loopback address: set [web] token "
            "(or CXR_TRIAGE__WEB__TOKEN) so that the worklist needs a login, or bind it to 127.0.0.1"
        )


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
