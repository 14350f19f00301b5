"""One TOML configuration, typed, documented in ``default_config.toml``, overridable by environment.

Each ``[section]`` is a frozen dataclass (``cxr_triage/settings.py``): its fields give every key's type (and, through
``Annotated``, its check), so ``cfg.node.port`` is an ``int`` to mypy and at run time.
``default_config.toml`` gives every key's default and its meaning, and nothing else does: the
embedded defaults are validated like a user file, and a key in one but not the other is an
error (``tests/test_config.py`` loads them). A user file or a ``CXR_TRIAGE__SECTION__KEY``
environment variable can only set known keys to values of the right type; every bad value is
reported at start, all at once, one line per key.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, get_args, get_origin, get_type_hints

import tomllib

from cxr_triage.settings import (
    DICOMWEB_PREFIX,
    Check,
    DeliverySettings,
    InferenceSettings,
    LoggingSettings,
    MonitoringSettings,
    NodeSettings,
    PriorsSettings,
    StoreSettings,
    TrainingSettings,
    WebSettings,
    parse_destination,
    parse_dicomweb_destination,
)

#: what callers import from here (the sections and destination parsers live in cxr_triage.settings)
__all__ = ["CONFIG_ENV", "DICOMWEB_PREFIX", "ENV_PREFIX", "Config", "ConfigError", "RawConfig", "load_config",
           "parse_destination", "parse_dicomweb_destination", "resolve_path", "write_config_file"]

ENV_PREFIX = "CXR_TRIAGE__"
CONFIG_ENV = "CXR_TRIAGE_CONFIG"

RawConfig = dict[str, dict[str, Any]]


class ConfigError(ValueError):
    """Raised with one line per bad value."""


@dataclass(frozen=True)
class Config:
    """The whole validated configuration: ``cfg.node.port`` etc.; ``source`` is the user file."""

    inference: InferenceSettings
    node: NodeSettings
    delivery: DeliverySettings
    web: WebSettings
    monitoring: MonitoringSettings
    training: TrainingSettings
    logging: LoggingSettings
    store: StoreSettings
    priors: PriorsSettings
    source: Path | None = None

    def as_dict(self) -> RawConfig:
        """``{section: {key: value}}``, every key (a valid input for :func:`write_config_file`)."""
        return {name: getattr(self, name).as_dict() for name in _sections()}

    def replace(self, **overrides: dict[str, Any]) -> Config:
        """A copy with some keys changed (validated like a file), e.g. for tests.

        ``cfg.replace(inference={"threads": 1})``; ConfigError as :func:`load_config`.
        """
        raw = self.as_dict()
        for sec, vals in overrides.items():
            raw.setdefault(sec, {}).update(vals)
        return _build(raw, self.source)


@dataclass(frozen=True)
class _Key:
    """One key's type as the checks see it: the plain type, choices or list, and its check."""

    kind: type
    choices: tuple[str, ...] = ()
    check: Check | None = None


def _key_of(hint: Any) -> _Key:
    check = None
    if get_origin(hint) is Annotated:
        hint, check = get_args(hint)[:2]
    if get_origin(hint) is Literal:
        return _Key(str, tuple(get_args(hint)), check)
    return _Key(get_origin(hint) or hint, (), check)


@functools.cache
def _sections() -> dict[str, dict[str, _Key]]:
    """``{section: {key: _Key}}`` from the dataclasses above, in file order."""
    hints = get_type_hints(Config)
    return {f.name: {k: _key_of(h) for k, h in get_type_hints(hints[f.name], include_extras=True).items()}
            for f in dataclasses.fields(Config) if f.name != "source"}


@functools.cache
def _defaults() -> RawConfig:
    text = resources.files("cxr_triage").joinpath("default_config.toml").read_text()
    return tomllib.loads(text)


def _type_error(key: _Key, val: Any) -> str | None:
    """Why ``val`` is not of the key's type, or None."""
    if key.kind is list:
        ok = isinstance(val, list) and all(isinstance(v, str) for v in val)
        return None if ok else "expected list of str"
    if type(val) is not key.kind:
        return f"expected {key.kind.__name__}"
    if key.choices and val not in key.choices:
        return f"must be one of {', '.join(key.choices)}"
    return None


#: ``user:password@`` of a URL in a value echoed in an error line (never shown)
_CREDENTIALS = re.compile(r"//[^/@\s'\"]*@")


def _check(name: str, key: str, spec: _Key, val: Any) -> str | None:
    """The error line for ``[name] key = val``, or None when it is good."""
    if spec.kind is float and type(val) is int:
        val = float(val)
    msg = _type_error(spec, val) or (spec.check(val) if spec.check else None)
    return f"[{name}] {key} = {_CREDENTIALS.sub('//', repr(val))}: {msg}" if msg else None


def _section(name: str, keys: dict[str, _Key], given: dict[str, Any], errors: list[str]) -> dict[str, Any]:
    """The section's values: the defaults with ``given`` applied; bad keys appended to ``errors``."""
    values = dict(_defaults().get(name, {}))
    errors += [f"[{name}] {key}: no default in default_config.toml" for key in keys if key not in values]
    for key, val in {**values, **given}.items():
        if key not in keys:
            errors.append(f"[{name}] {key}: unknown key")
        elif (msg := _check(name, key, keys[key], val)) is not None:
            errors.append(msg)
        else:
            values[key] = keys[key].kind(val) if keys[key].kind in (float, list) else val  # ints as floats; own lists
    return values


def _build(raw: RawConfig, source: Path | None) -> Config:
    """Validate ``raw`` over the defaults; ConfigError with every bad key, one line each."""
    schema = _sections()
    errors = [f"[{name}]: unknown section (known: {', '.join(schema)})" for name in raw if name not in schema]
    values = {name: _section(name, keys, raw.get(name, {}), errors) for name, keys in schema.items()}
    if errors:
        where = f" in {source}" if source else ""
        raise ConfigError(f"invalid configuration{where}:\n  " + "\n  ".join(errors))
    hints = get_type_hints(Config)
    return Config(**{name: hints[name](**vals) for name, vals in values.items()}, source=source)


def _parse_env(text: str, key: _Key | None) -> Any:
    """An environment string as the key's type; left a string when it does not parse."""
    kind = key.kind if key else str
    if kind is bool:
        low = text.strip().lower()
        return True if low in ("1", "true", "yes", "on") else False if low in ("0", "false", "no", "off") else text
    if kind is list:
        return [p.strip() for p in text.split(",") if p.strip()]
    if kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            return text
    return text


def _env_overrides(environ: Mapping[str, str]) -> RawConfig:
    """``CXR_TRIAGE__SEC__KEY=value`` -> ``{sec: {key: value}}``; ConfigError for a bad name."""
    out: RawConfig = {}
    for var, text in environ.items():
        if not var.startswith(ENV_PREFIX):
            continue
        parts = var[len(ENV_PREFIX):].lower().split("__")
        if len(parts) != 2:
            raise ConfigError(f"{var}: expected {ENV_PREFIX}<SECTION>__<KEY>")
        sec, key = parts
        out.setdefault(sec, {})[key] = _parse_env(text, _sections().get(sec, {}).get(key))
    return out


def _read_file(source: Path) -> RawConfig:
    try:
        return tomllib.loads(source.read_text())
    except FileNotFoundError:
        raise ConfigError(f"configuration file not found: {source}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration file {source} is not valid TOML: {exc}") from None


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Defaults <- TOML file (``path`` or ``$CXR_TRIAGE_CONFIG``) <- ``CXR_TRIAGE__SEC__KEY``.

    ConfigError (one line per bad key, all at once) for an unreadable file or bad values.
    """
    environ = os.environ if environ is None else environ
    path = path or environ.get(CONFIG_ENV) or None
    source = Path(path) if path else None
    raw = _read_file(source) if source else {}
    for sec, vals in _env_overrides(environ).items():
        raw.setdefault(sec, {}).update(vals)
    return _build(raw, source)


def resolve_path(cfg: Config, value: str) -> Path:
    """Relative paths in a config file are relative to that file."""
    p = Path(value).expanduser()
    if p.is_absolute():
        return p
    base = cfg.source.parent if cfg.source else Path.cwd()
    return (base / p).resolve()


def write_config_file(path: str | Path, defaults: RawConfig,
                      overrides: Mapping[str, dict[str, Any]] | None = None) -> Path:
    """Write ``defaults`` updated per section by ``overrides`` as a TOML config file.

    For tests, benchmarks and tools that start a node with a generated configuration. Values
    are strings, numbers, booleans or lists of those (their JSON spelling is valid TOML).
    """
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
