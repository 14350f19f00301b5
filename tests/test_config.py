import dataclasses
from importlib import resources
from pathlib import Path

import pytest
import tomllib

from cxr_triage.config import Config, ConfigError, load_config, parse_destination


def test_defaults_load_without_file():
    cfg = load_config(environ={})
    assert cfg.node.ae_title == "CXRTRIAGE"
    assert cfg.node.quiet_period_s == 10.0
    assert cfg.delivery.destinations == []


def test_file_and_env_override(tmp_path: Path):
    f = tmp_path / "c.toml"
    f.write_text('[node]\nport = 2000\nallowed_calling_aets = ["PACS"]\n[delivery]\ndestinations = ["ORTHANC@127.0.0.1:4242"]\n')
    cfg = load_config(f, environ={"CXR_TRIAGE__NODE__PORT": "3000", "CXR_TRIAGE__NODE__ALLOWED_HOSTS": "10.0.0.1, 10.0.0.2"})
    assert cfg.node.port == 3000
    assert cfg.node.allowed_calling_aets == ["PACS"]
    assert cfg.node.allowed_hosts == ["10.0.0.1", "10.0.0.2"]
    assert parse_destination(cfg.delivery.destinations[0]) == ("ORTHANC", "127.0.0.1", 4242)


def test_every_bad_value_is_reported(tmp_path: Path):
    f = tmp_path / "c.toml"
    f.write_text('[node]\nport = 70000\nae_title = "THIS_TITLE_IS_FAR_TOO_LONG"\nbogus = 1\n[logging]\nlevel = "LOUD"\n')
    with pytest.raises(ConfigError) as exc:
        load_config(f, environ={"CXR_TRIAGE__INFERENCE__THREADS": "many"})
    msg = str(exc.value)
    for needle in ("[node] port", "[node] ae_title", "[node] bogus: unknown key", "[logging] level", "[inference] threads"):
        assert needle in msg


def test_bad_destination_rejected():
    with pytest.raises(ConfigError, match="AE@host:port"):
        load_config(environ={"CXR_TRIAGE__DELIVERY__DESTINATIONS": "nohost"})


def test_dataclass_fields_and_default_toml_keys_agree():
    """default_config.toml documents every key: the same keys as the typed sections."""
    toml = tomllib.loads(resources.files("cxr_triage").joinpath("default_config.toml").read_text())
    cfg = load_config(environ={})
    sections = [f.name for f in dataclasses.fields(Config) if f.name != "source"]
    assert sections == list(toml)
    for name in sections:
        assert [f.name for f in dataclasses.fields(getattr(cfg, name))] == list(toml[name]), name
    assert cfg.as_dict() == toml


def test_values_have_their_declared_types():
    cfg = load_config(environ={"CXR_TRIAGE__NODE__QUIET_PERIOD_S": "3", "CXR_TRIAGE__WEB__ENABLED": "off"})
    assert cfg.node.quiet_period_s == 3.0 and isinstance(cfg.node.quiet_period_s, float)
    assert cfg.web.enabled is False and isinstance(cfg.node.port, int)
    with pytest.raises(ConfigError) as exc:
        load_config(environ={"CXR_TRIAGE__WEB__ENABLED": "maybe", "CXR_TRIAGE__NODE__PORT": "true"})
    assert str(exc.value).splitlines()[1:] == ["  [node] port = 'true': expected int",
                                               "  [web] enabled = 'maybe': expected bool"]


def test_replace_validates_and_the_config_is_frozen():
    cfg = load_config(environ={})
    changed = cfg.replace(node={"port": 2000}, web={"enabled": False})
    assert (changed.node.port, changed.web.enabled, cfg.node.port) == (2000, False, 11112)
    assert changed.as_dict()["node"]["port"] == 2000
    with pytest.raises(ConfigError, match=r"\[node\] port = -1: must be a TCP port"):
        cfg.replace(node={"port": -1})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.node.port = 1  # type: ignore[misc]
    cfg.web.trusted_proxies.append("10.0.0.1")  # each config owns its lists: the defaults stay
    assert load_config(environ={}).web.trusted_proxies == ["127.0.0.1", "::1"]


def test_list_items_must_be_strings(tmp_path: Path):
    f = tmp_path / "c.toml"
    f.write_text("[node]\nallowed_hosts = [1, 2]\n")
    with pytest.raises(ConfigError, match=r"\[node\] allowed_hosts = \[1, 2\]: expected list of str"):
        load_config(f, environ={})


def test_dicomweb_destination_credentials_are_refused_without_being_shown():
    """A password in a DICOMweb destination URL would be stored with every delivery and shown in
    logs, status and the worklist: refused at start, one line, the password not repeated."""
    with pytest.raises(ConfigError) as exc:
        load_config(None, environ={"CXR_TRIAGE__DELIVERY__DESTINATIONS":
                                   'dicomweb:https://alice:s3cret@pacs.example:8042/dicom-web'})
    text = str(exc.value)
    assert "credentials" in text and "netrc" in text and "pacs.example:8042/dicom-web" in text
    assert "s3cret" not in text and "alice" not in text and len(text.splitlines()) == 2  # heading + the key
    ok = load_config(None, environ={"CXR_TRIAGE__DELIVERY__DESTINATIONS": "dicomweb:https://pacs.example/dicom-web"})
    assert ok.delivery.destinations == ["dicomweb:https://pacs.example/dicom-web"]
