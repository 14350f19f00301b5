"""The pynetdicom patches (cxr_triage.dicom_node.compat) run only on the pynetdicom they were
written for: on another version (faked here) the node refuses to start with one clear line."""

from __future__ import annotations

import signal
import socket
from pathlib import Path
from typing import Any

import pynetdicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from support.node_peers import free_port, write_node_config

from cxr_triage import cli
from cxr_triage.config import ConfigError, load_config
from cxr_triage.dicom_node import compat
from cxr_triage.dicom_node.delivery.scu import associate
from cxr_triage.dicom_node.service.node import Node


@pytest.fixture
def other_pynetdicom(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(pynetdicom, "__version__", "3.1.0")
    return "3.1.0"


def test_the_installed_pynetdicom_is_the_supported_one() -> None:
    assert compat.pynetdicom_version().startswith(compat.SUPPORTED_PYNETDICOM + ".")
    compat.require_supported_pynetdicom()


@pytest.mark.parametrize("version", ["3.1.0", "2.0.2", "4.0.0", "3.0"])
def test_another_version_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch, version: str) -> None:
    monkeypatch.setattr(pynetdicom, "__version__", version)
    if version == "3.0":
        compat.require_supported_pynetdicom()           # 3.0 itself is the supported series
        return
    with pytest.raises(compat.UnsupportedPynetdicom) as exc:
        compat.require_supported_pynetdicom()
    assert isinstance(exc.value, ConfigError)
    message = str(exc.value)
    assert "\n" not in message and f"pynetdicom {version}" in message and "3.0.x" in message


def test_every_patch_checks_the_version(other_pynetdicom: str) -> None:
    with pytest.raises(compat.UnsupportedPynetdicom):
        compat.stream_c_store_data_sets(lambda ae: None)
    with pytest.raises(compat.UnsupportedPynetdicom):
        compat.deferred_handshake_server_context()
    not_used: Any = None                              # refused before the association is read
    with pytest.raises(compat.UnsupportedPynetdicom):
        compat.keep_responses_for_the_sender(not_used)
    with pytest.raises(compat.UnsupportedPynetdicom):
        compat.send_without_delay(not_used)
    with pytest.raises(compat.UnsupportedPynetdicom):        # before any connection is made
        associate(AE(ae_title="SCU"), "127.0.0.1", 9, ae_title="ANY")


def test_the_node_does_not_start(tmp_path: Path, tiny_model: Path, other_pynetdicom: str) -> None:
    cfg = load_config(environ={}).replace(
        node={"host": "127.0.0.1", "port": 0, "state_dir": str(tmp_path / "state")},
        inference={"model_path": str(tiny_model)}, web={"enabled": False})
    node = Node(cfg)
    try:
        with pytest.raises(compat.UnsupportedPynetdicom):
            node.start()
        assert node.server is None and node.worker is None and node.deliverer is None
    finally:
        node.store.close()


def test_serve_refuses_with_one_line(tmp_path: Path, tiny_model: Path, other_pynetdicom: str,
                                     capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(signal, "signal", lambda *args: None)     # keep pytest's own handlers
    rc = cli.main(["serve", "--port", "0", "--state-dir", str(tmp_path / "state"),
                   "--model", str(tiny_model)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("cxr-triage serve: refusing to start: pynetdicom 3.1.0")


def test_sent_objects_wait_for_no_delayed_ack() -> None:
    """The SCU's association socket has TCP_NODELAY (compat.send_without_delay)."""
    scp = AE(ae_title="PEER")
    scp.add_supported_context(Verification)
    server = scp.start_server(("127.0.0.1", 0), block=False)
    try:
        scu = AE(ae_title="SCU")
        scu.add_requested_context(Verification)
        assoc = associate(scu, "127.0.0.1", server.server_address[1], ae_title="PEER")
        assert assoc.is_established
        assert assoc.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert assoc.send_c_echo().Status == 0
        assoc.release()
    finally:
        server.shutdown()


def test_responses_wait_for_no_delayed_ack(tmp_path: Path, tiny_model: Path) -> None:
    """The node's accepted association sockets have TCP_NODELAY (compat.respond_without_delay on
    EVT_ACCEPTED), so a C-STORE-RSP of a few dozen bytes leaves at once."""
    port = free_port()
    node = Node(load_config(write_node_config(tmp_path / "node.toml", port, tiny_model))).start()
    try:
        scu = AE(ae_title="SCU")
        scu.add_requested_context(Verification)
        assoc = scu.associate("127.0.0.1", port, ae_title="CXRTRIAGE")
        assert assoc.is_established and assoc.send_c_echo().Status == 0
        (accepted,) = node.server.active_associations
        assert accepted.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assoc.release()
    finally:
        node.stop(timeout_s=10)
