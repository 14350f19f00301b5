"""One TOML configuration, documented in ``default_config.toml``, overridable by environment.

The embedded defaults are the schema: a key's default fixes its type, so a user file or an
environment variable can only set known keys to values of the right type. Every bad value is
reported at start, all at once, with the key it belongs to.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Iterator, Mapping

import tomllib

ENV_PREFIX = "CXR_TRIAGE__"
CONFIG_ENV = "CXR_TRIAGE_CONFIG"


class ConfigError(ValueError):
    """Raised with one line per bad value."""


class Section(Mapping[str, Any]):
    """Read-only attribute access to one ``[section]``."""

    def __init__(self, name: str, values: dict[str, Any]):
        self._name = name
        self._values = MappingProxyType(dict(values))

    def __getattr__(self, key: str) -> Any:
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError(f"config section [{self._name}] has no key {key!r}") from None

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Section({self._name!r}, {dict(self._values)!r})"


class Config(Mapping[str, Section]):
    """The whole validated configuration; ``cfg.node.port`` etc."""

    def __init__(self, sections: dict[str, Section], source: Path | None):
        self._sections = sections
        self.source = source

    def __getattr__(self, name: str) -> Section:
        try:
            return self._sections[name]
        except KeyError:
            raise AttributeError(f"no config section [{name}]") from None

    def __getitem__(self, name: str) -> Section:
        return self._sections[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._sections)

    def __len__(self) -> int:
        return len(self._sections)

    def as_dict(self) -> dict[str, dict[str, Any]]:
        return {k: dict(v) for k, v in self._sections.items()}

    def replace(self, **overrides: dict[str, Any]) -> "Config":
        """A copy with some keys changed (validated like a file), e.g. for tests."""
        raw = self.as_dict()
        for sec, vals in overrides.items():
            raw.setdefault(sec, {}).update(vals)
        return _build(raw, self.source)


def _defaults() -> dict[str, dict[str, Any]]:
    text = resources.files("cxr_triage").joinpath("default_config.toml").read_text()
    return tomllib.loads(text)


def _parse_env(raw: str, default: Any) -> Any:
    if isinstance(default, bool):
        low = raw.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        return raw
    if isinstance(default, int):
        try:
            return int(raw)
        except ValueError:
            return raw
    if isinstance(default, float):
        try:
            return float(raw)
        except ValueError:
            return raw
    if isinstance(default, list):
        return [p.strip() for p in raw.split(",") if p.strip()]
    return raw


def _positive(v: Any) -> str | None:
    return None if v > 0 else "must be > 0"


def _non_negative(v: Any) -> str | None:
    return None if v >= 0 else "must be >= 0"


def _port(v: Any) -> str | None:
    return None if 0 <= v <= 65535 else "must be a TCP port 0-65535"


def _ae_title(v: Any) -> str | None:
    ok = 0 < len(v) <= 16 and v.isascii() and "\\" not in v and v.strip() == v
    return None if ok else "must be 1-16 ASCII characters without backslash or padding"


def _destinations(v: Any) -> str | None:
    for item in v:
        try:
            parse_destination(item)
        except ValueError as exc:
            return str(exc)
    return None


def _user_tokens(v: Any) -> str | None:
    for n, entry in enumerate(v, start=1):
        user, sep, token = str(entry).partition(":")
        if not sep or not user.strip() or len(token) < 16:
            return f"entry {n} is not 'name:token' with a token of at least 16 characters"
    return None


def _one_of(*choices: str) -> Callable[[Any], str | None]:
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}"


_CHECKS: dict[tuple[str, str], Callable[[Any], str | None]] = {
    ("inference", "threads"): _positive,
    ("inference", "batch_size"): _positive,
    ("inference", "min_age_years"): _non_negative,
    ("inference", "min_image_size"): _positive,
    ("inference", "max_pixels"): _positive,
    ("node", "ae_title"): _ae_title,
    ("node", "port"): _port,
    ("node", "max_associations"): _positive,
    ("node", "max_pdu_size"): _non_negative,
    ("node", "network_timeout_s"): _positive,
    ("node", "quiet_period_s"): _non_negative,
    ("node", "max_instance_bytes"): _non_negative,
    ("node", "audit_max_bytes"): _non_negative,
    ("node", "audit_keep_files"): _positive,
    ("node", "quarantine_max_files"): _non_negative,
    ("node", "quarantine_max_bytes"): _non_negative,
    ("delivery", "destinations"): _destinations,
    ("delivery", "shadow_destinations"): _destinations,
    ("delivery", "hl7_destinations"): _destinations,
    ("delivery", "retry_initial_s"): _positive,
    ("delivery", "retry_max_s"): _positive,
    ("delivery", "refused_retry_s"): _positive,
    ("delivery", "dead_letter_after_s"): _positive,
    ("delivery", "summary_image_compression"): _one_of("jpeg-ls", "rle", "jpeg", "none"),
    ("web", "port"): _port,
    ("web", "user_tokens"): _user_tokens,
    ("web", "max_wait_likely_normal_min"): _non_negative,
    ("web", "refresh_s"): _positive,
    ("web", "max_rows"): _positive,
    ("monitoring", "psi_max"): _positive,
    ("monitoring", "alpha"): lambda v: None if 0 < v < 1 else "must be in (0, 1)",
    ("monitoring", "decision_share_delta"): _positive,
    ("monitoring", "not_assessable_delta"): _positive,
    ("monitoring", "min_films"): _positive,
    ("monitoring", "psi_bins"): lambda v: None if v >= 2 else "must be >= 2",
    ("training", "architecture"): _one_of("effnet_lite0", "densenet121", "tiny"),
    ("training", "image_size"): lambda v: None if v >= 32 else "must be >= 32",
    ("training", "epochs"): _positive,
    ("training", "batch_size"): _positive,
    ("training", "patience"): _positive,
    ("training", "max_minutes"): _non_negative,
    ("training", "threads"): _positive,
    ("logging", "level"): _one_of("DEBUG", "INFO", "WARNING", "ERROR"),
    ("logging", "format"): _one_of("json", "text"),
}


def parse_destination(text: str) -> tuple[str, str, int]:
    """``"AE@host:port"`` -> (ae, host, port)."""
    try:
        ae, rest = text.split("@", 1)
        host, port = rest.rsplit(":", 1)
        port_i = int(port)
    except ValueError:
        raise ValueError(f"destination {text!r} is not of the form AE@host:port") from None
    if _ae_title(ae) or not host or _port(port_i):
        raise ValueError(f"destination {text!r} has a bad AE title, host or port")
    return ae, host, port_i


def _build(raw: dict[str, dict[str, Any]], source: Path | None) -> Config:
    defaults = _defaults()
    errors: list[str] = []
    sections: dict[str, Section] = {}
    for name in raw:
        if name not in defaults:
            errors.append(f"[{name}]: unknown section (known: {', '.join(defaults)})")
    for name, dvals in defaults.items():
        given = raw.get(name, {})
        values = dict(dvals)
        for key, val in given.items():
            if key not in dvals:
                errors.append(f"[{name}] {key}: unknown key")
                continue
            default = dvals[key]
            if isinstance(default, float) and isinstance(val, int) and not isinstance(val, bool):
                val = float(val)
            if type(val) is not type(default):
                errors.append(
                    f"[{name}] {key} = {val!r}: expected {type(default).__name__}"
                )
                continue
            check = _CHECKS.get((name, key))
            msg = check(val) if check else None
            if msg:
                errors.append(f"[{name}] {key} = {val!r}: {msg}")
                continue
            values[key] = val
        sections[name] = Section(name, values)
    if errors:
        where = f" in {source}" if source else ""
        raise ConfigError(f"invalid configuration{where}:\n  " + "\n  ".join(errors))
    return Config(sections, source)


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Defaults <- TOML file (``path`` or ``$CXR_TRIAGE_CONFIG``) <- ``CXR_TRIAGE__SEC__KEY``."""
    environ = os.environ if environ is None else environ
    path = path or environ.get(CONFIG_ENV) or None
    raw: dict[str, dict[str, Any]] = {}
    source = None
    if path:
        source = Path(path)
        try:
            raw = tomllib.loads(source.read_text())
        except FileNotFoundError:
            raise ConfigError(f"configuration file not found: {source}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"configuration file {source} is not valid TOML: {exc}") from None
    defaults = _defaults()
    for var, text in environ.items():
        if not var.startswith(ENV_PREFIX):
            continue
        parts = var[len(ENV_PREFIX):].lower().split("__")
        if len(parts) != 2:
            raise ConfigError(f"{var}: expected {ENV_PREFIX}<SECTION>__<KEY>")
        sec, key = parts
        default = defaults.get(sec, {}).get(key, "")
        raw.setdefault(sec, {})[key] = _parse_env(text, default)
    cfg = _build(raw, source)
    return cfg


def resolve_path(cfg: Config, value: str) -> Path:
    """Relative paths in a config file are relative to that file."""
    p = Path(value).expanduser()
    if p.is_absolute():
        return p
    base = cfg.source.parent if cfg.source else Path.cwd()
    return (base / p).resolve()


def write_config_file(path: str | Path, defaults: dict[str, dict[str, Any]],
                      overrides: Mapping[str, dict[str, Any]] | None = None) -> Path:
    """Write ``defaults`` updated per section by ``overrides`` as a TOML config file.

    For tests, benchmarks and tools that start a node with a generated configuration. Values
    are strings, numbers, booleans or lists of those (their JSON spelling is valid TOML).
    """
    import json

    sections = {sec: dict(vals) for sec, vals in defaults.items()}
    for sec, vals in (overrides or {}).items():
        sections.setdefault(sec, {}).update(vals)
    text = "".join(
        f"[{sec}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in vals.items()) + "\n"
        for sec, vals in sections.items()
    )
    path = Path(path)
    path.write_text(text)
    return path
