"""Security defaults and routine peer failures (issue 23, class 8).

- With the embedded defaults (no allow-lists) the DICOM port binds loopback only and says so
  at start; allow-lists, or an explicit ``[node] host``, open it to the network.
- A PACS that is down (connection refused, or a port that never answers) is one WARNING line
  per attempt naming the cause, with no ERROR line and no pynetdicom traceback, and
  ``cxr-triage status`` names the cause ("connection refused", not "association aborted").
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
from pathlib import Path

import pytest
from support.node_peers import CLI, NodeProcess, c_store, free_port, wait_for, write_node_config

from cxr_triage.config import load_config
from cxr_triage.dicom_node.receive.server import listen_host
from cxr_triage.dicom_node.service.node import Node


def _node_cfg(tmp_path: Path, tiny_model: Path, **node: object) -> object:
    return load_config(environ={}).replace(
        node={"port": 0, "state_dir": str(tmp_path / "s"), **node},
        inference={"model_path": str(tiny_model)}, web={"enabled": False})


def test_embedded_defaults_bind_loopback_only() -> None:
    cfg = load_config(environ={})
    assert cfg.node.host == "" and not cfg.node.allowed_calling_aets and not cfg.node.allowed_hosts
    assert listen_host(cfg)[0] == "127.0.0.1"
    for lists in ({"allowed_calling_aets": ["PACS"]}, {"allowed_hosts": ["10.1.2.3"]}):
        assert listen_host(cfg.replace(node=lists))[0] == "0.0.0.0"
    assert listen_host(cfg.replace(node={"host": "0.0.0.0"}))[0] == "0.0.0.0"      # explicit
    assert listen_host(cfg.replace(node={"host": "10.9.8.7", "allowed_hosts": ["10.1.2.3"]}))[0] == "10.9.8.7"


@pytest.mark.parametrize("node_settings, bound", [
    ({}, "127.0.0.1"),
    ({"allowed_calling_aets": ["PACS"]}, "0.0.0.0"),
    ({"host": "0.0.0.0"}, "0.0.0.0"),
])
def test_the_node_binds_as_configured_and_says_so(tmp_path: Path, tiny_model: Path,
                                                  caplog: pytest.LogCaptureFixture,
                                                  node_settings: dict, bound: str) -> None:
    caplog.set_level(logging.INFO)
    node = Node(_node_cfg(tmp_path, tiny_model, **node_settings)).start()
    try:
        assert node.server.server_address[0] == bound
    finally:
        node.stop(timeout_s=5)
    said = [r for r in caplog.records if r.getMessage() == "DICOM port bound"]
    assert len(said) == 1 and said[0].host == bound, said
    if not node_settings:                        # the default: a WARNING that says why
        assert said[0].levelno == logging.WARNING and "loopback only" in said[0].why


def _closed_port() -> int:
    return free_port()                           # nothing listens there: connection refused


def _never_answers() -> tuple[socket.socket, int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)                                  # accepted by the kernel, never answered
    return s, s.getsockname()[1]


@pytest.mark.parametrize("peer", ["refused", "silent"])
def test_a_pacs_that_is_down_is_one_warning_with_its_cause(tmp_path: Path, tiny_model: Path,
                                                           sample_dicoms: dict[str, Path],
                                                           peer: str) -> None:
    from pydicom import dcmread

    silent = None
    if peer == "refused":
        dport, cause = _closed_port(), "connection refused"
    else:
        silent, dport = _never_answers()
        cause = "no answer to the association request"
    port = free_port()
    cfg = write_node_config(tmp_path / "node.toml", port, tiny_model,
                            node={"network_timeout_s": 2.0},
                            delivery={"destinations": [f"PACS@127.0.0.1:{dport}"]})
    node = NodeProcess(cfg, port).start()
    try:
        ds = dcmread(next(iter(sample_dicoms.values())))
        c_store(port, ds)
        failed = lambda: [json.loads(line) for line in node.log.read_text().splitlines()  # noqa: E731
                          if line.startswith("{") and '"delivery failed"' in line]
        wait_for(lambda: len(failed()) >= 2, 60, 0.2, "two failed attempts")
        status = subprocess.run([str(CLI), "--config", str(cfg), "status"], capture_output=True,
                                text=True, timeout=60)
    finally:
        node.stop()
        if silent is not None:
            silent.close()
    lines = node.log.read_text().splitlines()
    assert all(cause in entry["error"] for entry in failed()), failed()
    assert not [ln for ln in lines if '"level": "ERROR"' in ln or "Traceback" in ln], node.tail(60)
    warnings = [ln for ln in lines if '"level": "WARNING"' in ln and "DICOM port bound" not in ln
                and "in flight" not in ln and "interrupted" not in ln]
    assert len(warnings) == len(failed()), warnings          # one line per failed attempt
    assert cause in status.stdout, status.stdout
    assert "association aborted" not in status.stdout, status.stdout
