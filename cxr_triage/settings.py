"""The typed sections of the configuration: one frozen dataclass per ``[section]``.

Each field gives a key's type and, through ``Annotated``, its check (a function returning None
when the value is good, else one line saying what is wrong). The keys' meanings and defaults are
in ``default_config.toml`` and nowhere else; loading and validating is ``cxr_triage.config``.
Destination strings: ``AE@host:port`` (DICOM, PS3.8 association addressing), ``hl7:`` (MLLP),
``dicomweb:URL`` (STOW-RS, PS3.18 10.5).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Literal
from urllib.parse import urlsplit

#: a value's check: None when good, else what is wrong with it (one line)
Check = Callable[[Any], str | None]


def _positive(v: float) -> str | None:
    return None if v > 0 else "must be > 0"


def _non_negative(v: float) -> str | None:
    return None if v >= 0 else "must be >= 0"


def _at_least(low: int) -> Check:
    return lambda v: None if v >= low else f"must be >= {low}"


def _unit_interval(v: float) -> str | None:
    return None if 0 < v < 1 else "must be in (0, 1)"


def _port(v: int) -> str | None:
    return None if 0 <= v <= 65535 else "must be a TCP port 0-65535"


def _ae_title(v: str) -> str | None:
    ok = 0 < len(v) <= 16 and v.isascii() and "\\" not in v and v.strip() == v
    return None if ok else "must be 1-16 ASCII characters without backslash or padding"


def _destinations(v: list[str]) -> str | None:
    for item in v:
        try:
            parse_destination(item)
        except ValueError as exc:
            return str(exc)
    return None


def _optional_destination(v: str) -> str | None:
    return _destinations([v]) if v else None


def _result_destinations(v: list[str]) -> str | None:
    for item in v:
        try:
            if item.startswith(DICOMWEB_PREFIX):
                parse_dicomweb_destination(item)
            else:
                parse_destination(item)
        except ValueError as exc:
            return str(exc)
    return None


def _user_tokens(v: list[str]) -> str | None:
    for n, entry in enumerate(v, start=1):
        user, sep, token = entry.partition(":")
        if not sep or not user.strip() or len(token) < 16:
            return f"entry {n} is not 'name:token' with a token of at least 16 characters"
    return None


def parse_destination(text: str) -> tuple[str, str, int]:
    """``"AE@host:port"`` -> (ae, host, port); ValueError (one line) when malformed."""
    try:
        ae, rest = text.split("@", 1)
        host, port = rest.rsplit(":", 1)
        port_i = int(port)
    except ValueError:
        raise ValueError(f"destination {text!r} is not of the form AE@host:port") from None
    if _ae_title(ae) or not host or _port(port_i):
        raise ValueError(f"destination {text!r} has a bad AE title, host or port")
    return ae, host, port_i


#: a result destination that is a DICOMweb service: ``dicomweb:https://host[:port]/path``
DICOMWEB_PREFIX = "dicomweb:"


def parse_dicomweb_destination(text: str) -> str:
    """``"dicomweb:https://pacs:8042/dicom-web"`` -> the service URL (STOW-RS posts to
    ``<url>/studies``, PS3.18 10.5); ValueError (one line) unless http(s) with a host.

    A user name or password in the URL is refused: the destination string is stored with each
    delivery and shown in logs, ``status``, the audit trail and the worklist. Credentials for
    HTTP Basic authentication come from the service account's netrc file (``~/.netrc`` or
    ``$NETRC``, read by ``requests`` for the destination's host)."""
    url = text[len(DICOMWEB_PREFIX):] if text.startswith(DICOMWEB_PREFIX) else ""
    try:
        parts = urlsplit(url)
        parts.port                               # noqa: B018 - raises on a bad port
    except ValueError:
        parts = urlsplit("")
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ValueError(f"destination {text!r} is not of the form dicomweb:http(s)://host[:port]/path")
    if parts.username is not None or parts.password is not None:
        shown = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
        raise ValueError(f"destination dicomweb:{shown} carries credentials in its URL, which would be shown in "
                         "logs and the worklist: put them in the service account's ~/.netrc (or $NETRC) instead")
    return url.rstrip("/")


Positive = Annotated[int, _positive]
PositiveFloat = Annotated[float, _positive]
Count = Annotated[int, _non_negative]
Seconds = Annotated[float, _non_negative]
Port = Annotated[int, _port]
Destinations = Annotated[list[str], _destinations]
ResultDestinations = Annotated[list[str], _result_destinations]   # AE@host:port or dicomweb:URL


@dataclass(frozen=True)
class _Section:
    """One ``[section]``; the keys' meanings and defaults are in ``default_config.toml``."""

    def as_dict(self) -> dict[str, Any]:
        """``{key: value}`` (lists copied)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class InferenceSettings(_Section):
    model_path: str
    threads: Positive
    batch_size: Positive
    operating_point: str
    nodule_operating_point: str
    site_threshold_file: str
    min_age_years: Count
    min_image_size: Positive
    max_pixels: Positive
    j2k_reduced_resolution: bool


@dataclass(frozen=True)
class NodeSettings(_Section):
    ae_title: Annotated[str, _ae_title]
    host: str
    port: Port
    allowed_calling_aets: list[str]
    allowed_hosts: list[str]
    max_associations: Positive
    max_pdu_size: Count
    network_timeout_s: PositiveFloat
    quiet_period_s: Seconds
    state_dir: str
    max_instance_bytes: Count
    audit_max_bytes: Count
    audit_keep_files: Positive
    quarantine_max_files: Count
    quarantine_max_bytes: Count
    shadow_mode: bool
    tls_enabled: bool
    tls_cert: str
    tls_key: str
    tls_ca: str


@dataclass(frozen=True)
class DeliverySettings(_Section):
    destinations: ResultDestinations
    shadow_destinations: ResultDestinations
    retry_initial_s: PositiveFloat
    retry_max_s: PositiveFloat
    refused_retry_s: PositiveFloat
    dead_letter_after_s: PositiveFloat
    summary_image: bool
    summary_image_compression: Literal["jpeg-ls", "rle", "jpeg", "none"]
    hl7_destinations: Destinations
    hl7_sending_facility: str
    tls_enabled: bool
    tls_ca: str
    tls_cert: str
    tls_key: str


@dataclass(frozen=True)
class WebSettings(_Section):
    enabled: bool
    host: str
    port: Port
    token: str
    user_tokens: Annotated[list[str], _user_tokens]
    trusted_user_header: str
    trusted_proxies: list[str]
    tls_cert: str
    tls_key: str
    max_wait_likely_normal_min: Annotated[float, _non_negative]
    refresh_s: Positive
    max_rows: Positive


@dataclass(frozen=True)
class MonitoringSettings(_Section):
    psi_max: PositiveFloat
    decision_share_delta: PositiveFloat
    not_assessable_delta: PositiveFloat
    alpha: Annotated[float, _unit_interval]
    min_films: Positive
    psi_bins: Annotated[int, _at_least(2)]
    baseline_file: str


@dataclass(frozen=True)
class TrainingSettings(_Section):
    architecture: Literal["effnet_lite0", "effnet_lite1", "effnet_lite2", "densenet121", "tiny"]
    image_size: Annotated[int, _at_least(32)]
    epochs: Positive
    batch_size: Positive
    patience: Positive
    max_minutes: Seconds
    threads: Positive
    cache_dir: str
    test_report: bool


@dataclass(frozen=True)
class StoreSettings(_Section):
    backend: Literal["sqlite", "postgresql"]
    dsn: str
    node_name: str
    lease_s: PositiveFloat
    connect_timeout_s: PositiveFloat


@dataclass(frozen=True)
class PriorsSettings(_Section):
    enabled: bool
    query_destination: Annotated[str, _optional_destination]
    years: Positive
    query_timeout_s: PositiveFloat
    escalate: bool
    escalation_days: Positive


@dataclass(frozen=True)
class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"]
    format: Literal["json", "text"]


