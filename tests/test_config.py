from pathlib import Path

import pytest

from cxr_triage.config import ConfigError, load_config, parse_destination


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
