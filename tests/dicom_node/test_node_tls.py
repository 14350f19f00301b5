"""Optional mutual TLS: dcmtk's TLS client with a trusted certificate gets in, others do not."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from support.node_peers import DCMTK, NODE_AET, wait_for

from cxr_triage.config import load_config
from cxr_triage.dicom_node.delivery.scu import associate
from cxr_triage.dicom_node.service.node import Node

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI needed to make certificates")


def _ca(d: Path, name: str) -> tuple[Path, Path]:
    key, crt = d / f"{name}.key", d / f"{name}.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", crt,
                    "-subj", f"/CN={name}", "-days", "2"], check=True, capture_output=True)
    return key, crt


def _signed(d: Path, name: str, ca: tuple[Path, Path]) -> tuple[Path, Path]:
    key, csr, crt, ext = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.crt", d / f"{name}.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    subprocess.run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
                    "-subj", f"/CN={name}"], check=True, capture_output=True)
    subprocess.run(["openssl", "x509", "-req", "-in", csr, "-CA", ca[1], "-CAkey", ca[0], "-CAcreateserial",
                    "-out", crt, "-days", "2", "-extfile", ext], check=True, capture_output=True)
    return key, crt


def _tls_node(tmp_path: Path, tiny_model: Path) -> tuple[Node, Path, tuple[Path, Path], tuple[Path, Path]]:
    """A node with mutual TLS: (node, CA certificate, a trusted client's and a rogue CA's
    client's (key, certificate))."""
    ca = _ca(tmp_path, "ca")
    server = _signed(tmp_path, "server", ca)
    client = _signed(tmp_path, "client", ca)
    rogue_ca = _ca(tmp_path, "rogue")
    rogue = _signed(tmp_path, "rogueclient", rogue_ca)
    cfg = load_config(environ={}).replace(
        node={"host": "127.0.0.1", "port": 0, "state_dir": str(tmp_path / "s"), "tls_enabled": True,
              "tls_cert": str(server[1]), "tls_key": str(server[0]), "tls_ca": str(ca[1])},
        inference={"model_path": str(tiny_model)}, web={"enabled": False})
    return Node(cfg).start(), ca[1], client, rogue


def _echoscu(node: Node, *tls: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(DCMTK / "echoscu"), "-to", "10", *tls, "-aet", "TLSSCU", "-aec", NODE_AET,
                           "127.0.0.1", str(node.port)], capture_output=True, text=True, timeout=60)


def test_mutual_tls(tmp_path: Path, tiny_model: Path) -> None:
    node, ca, client, rogue = _tls_node(tmp_path, tiny_model)
    try:
        good = _echoscu(node, "+tls", str(client[0]), str(client[1]), "+cf", str(ca))
        assert good.returncode == 0, good.stderr
        assert _echoscu(node).returncode != 0                                          # plain TCP
        assert _echoscu(node, "+tls", str(rogue[0]), str(rogue[1]), "+cf", str(ca)).returncode != 0
        assert _echoscu(node, "+tla", "+cf", str(ca)).returncode != 0                 # anonymous TLS
    finally:
        node.stop(timeout_s=5)


def test_refused_tls_connections_are_audited(tmp_path: Path, tiny_model: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    """Issue 23, class 8: plain TCP on the TLS port, a client certificate from another CA and
    anonymous TLS each leave a Security Alert naming the TLS refusal (the trusted client
    none), logged as one WARNING line each: no ERROR line, no traceback."""
    import logging

    from cxr_triage.dicom_node.store.audit import read_audit

    caplog.set_level(logging.INFO)

    node, ca_crt, client, rogue = _tls_node(tmp_path, tiny_model)
    try:
        assert _echoscu(node, "+tls", str(client[0]), str(client[1]), "+cf", str(ca_crt)).returncode == 0
        tls_alerts = lambda: [e for e in read_audit(node.dirs.audit_log)  # noqa: E731
                              if "TLS handshake failed" in str(e.get("detail", ""))]
        assert tls_alerts() == []
        for refused in ([], ["+tls", str(rogue[0]), str(rogue[1]), "+cf", str(ca_crt)], ["+tla", "+cf", str(ca_crt)]):
            before = len(tls_alerts())
            assert _echoscu(node, *refused).returncode != 0
            wait_for(lambda before=before: len(tls_alerts()) > before, 10, 0.1, f"audit of {refused[:1]}")
        alerts = tls_alerts()
        assert len(alerts) == 3, alerts
        assert all(e["peer"] == "127.0.0.1" for e in alerts), alerts
    finally:
        node.stop(timeout_s=5)
    loud = [(r.name, r.getMessage()) for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert loud == []
    said = [r for r in caplog.records if r.levelno == logging.WARNING and "association rejected" in r.getMessage()]
    assert len(said) == 3 and all("TLS handshake failed" in r.reason for r in said), said


def test_results_delivered_over_tls(tmp_path: Path, tiny_model: Path, sample_dicoms: dict[str, Path]) -> None:
    from pydicom import dcmread
    from pynetdicom import AE
    from pynetdicom.sop_class import SecondaryCaptureImageStorage
    from support.node_peers import free_port, wait_for, wait_port

    ca = _ca(tmp_path, "ca")
    dest_cert = _signed(tmp_path, "pacs", ca)
    node_cert = _signed(tmp_path, "node", ca)
    out, dport = tmp_path / "received", free_port()
    out.mkdir()
    scp = subprocess.Popen([str(DCMTK / "storescp"), "+tls", str(dest_cert[0]), str(dest_cert[1]),
                            "+cf", str(ca[1]), "--aetitle", "PACS", "--output-directory", str(out), str(dport)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cfg = load_config(environ={}).replace(
        node={"host": "127.0.0.1", "port": 0, "state_dir": str(tmp_path / "s"), "quiet_period_s": 0.2},
        delivery={"destinations": [f"PACS@127.0.0.1:{dport}"], "summary_image": False, "tls_enabled": True,
                  "tls_ca": str(ca[1]), "tls_cert": str(node_cert[1]), "tls_key": str(node_cert[0])},
        inference={"model_path": str(tiny_model)}, web={"enabled": False})
    node = None
    try:
        wait_port(dport)
        node = Node(cfg).start()
        ae = AE(ae_title="SCU")
        ae.add_requested_context(SecondaryCaptureImageStorage)
        assoc = associate(ae, "127.0.0.1", node.port, ae_title=NODE_AET)
        assert assoc.send_c_store(dcmread(sample_dicoms["nih_gcp_dx_chest_nofinding"])).Status == 0
        assoc.release()
        (sr,) = wait_for(lambda: [p for p in out.iterdir() if p.name.startswith("SR")], 60, 0.3, "SR over TLS")
        assert dcmread(sr).Modality == "SR"
        # storescp writes the file before it answers; the node records the delivery on the answer
        wait_for(lambda: node.queries.list_studies()[0]["delivery_status"] == "delivered", 30, 0.1,
                 "the SR's delivery recorded")
    finally:
        if node:
            node.stop(timeout_s=5)
        scp.terminate()
        scp.wait(10)
