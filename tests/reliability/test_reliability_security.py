"""Security: strangers get nowhere, TLS peers must prove who they are, logs carry no PHI.

* An unknown calling AE title and a host outside the allow-list are rejected at association
  (dcmtk echoscu, and pynetdicom bound to another loopback address), each with a Security
  Alert in the audit log.
* Mutual TLS with certificates made here by ``openssl``: dcmtk's TLS client
  (``storescu +tls client.key client.crt +cf ca.crt``) stores a film that is then triaged;
  a client certificate from another CA — one the operating system trusts, even — a client with
  no certificate, anonymous TLS and plain TCP are all refused, and nothing of theirs is stored.
  A connection that never starts its TLS handshake does not stop others from connecting.
* Every line of every log the suite wrote (node stdout/stderr at DEBUG, audit logs) is searched
  for the PHI the films carried; a spooled film is searched too, to show the search finds it.
* The audit log is JSON lines naming each received object by UID, calling AE and outcome.
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from support.reliability_harness import (
    LOG_FILES,
    NODE_AET,
    PHI_MARKERS,
    SUMMARY,
    NodeProc,
    base_films,
    echo,
    film_pngs,
    free_port,
    make_studies,
    phi_hits,
    wait_for,
    write_config,
)

DCMTK = Path("/usr/bin")
OPENSSL = shutil.which("openssl")


def _openssl(*args: str, cwd: Path) -> None:
    r = subprocess.run([OPENSSL, *args], cwd=cwd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def make_pki(d: Path) -> dict[str, Path]:
    """A site CA with a server and a client certificate, and a rogue CA with its own client."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for ca in ("ca", "rogue_ca"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key",
                 "-out", f"{ca}.crt", "-days", "2", "-subj", f"/CN=cxr-triage test {ca}", cwd=d)
    for name, ca in (("server", "ca"), ("client", "ca"), ("rogue", "rogue_ca")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={'localhost' if name == 'server' else name}", cwd=d)
        ext = ["-extfile", "server.ext"] if name == "server" else []
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", *ext, cwd=d)
    return {p.stem if p.suffix == ".crt" else p.name: p for p in d.iterdir()}


def _client_ctx(pki: Path, cert: str | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(pki / "ca.crt"))
    if cert:
        ctx.load_cert_chain(str(pki / f"{cert}.crt"), str(pki / f"{cert}.key"))
    return ctx


def _storescu(port: int, film: Path, *tls: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(DCMTK / "storescu"), *tls, "-aet", "TRUSTED", "-aec", NODE_AET,
                           "-to", "10", "-ta", "10", "127.0.0.1", str(port), str(film)],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.reliability
def test_unknown_calling_ae_and_disallowed_host_are_rejected(tmp_path: Path, tiny_model: Path) -> None:
    port = free_port()
    cfg = write_config(tmp_path / "node.toml", port, tiny_model,
                       node={"allowed_calling_aets": ["TRUSTED"], "allowed_hosts": ["127.0.0.1"]},
                       logging={"level": "DEBUG"})
    node = NodeProc(cfg, port).start()
    try:
        def dcmtk_echo(aet: str) -> subprocess.CompletedProcess:
            return subprocess.run([str(DCMTK / "echoscu"), "-aet", aet, "-aec", NODE_AET, "127.0.0.1",
                                   str(port)], capture_output=True, text=True, timeout=30)

        assert dcmtk_echo("TRUSTED").returncode == 0
        stranger = dcmtk_echo("STRANGER")
        assert stranger.returncode != 0 and "Calling AE Title Not Recognized" in stranger.stderr
        ae = AE(ae_title="TRUSTED")
        ae.add_requested_context(Verification)
        other_host = ae.associate("127.0.0.1", port, ae_title=NODE_AET, bind_address=("127.0.0.2", 0))
        assert other_host.is_rejected and not other_host.is_established
        same_host = ae.associate("127.0.0.1", port, ae_title=NODE_AET, bind_address=("127.0.0.1", 0))
        assert same_host.is_established
        same_host.release()
        assert node.stop() == 0
        alerts = [e for e in node.audit() if e["event_id"] == "110113"]
        assert {(a.get("calling_ae"), a.get("peer")) for a in alerts} >= {("STRANGER", "127.0.0.1"),
                                                                       ("TRUSTED", "127.0.0.2")}
        assert phi_hits([node.log, node.state_dir / "audit.jsonl"]) == []
        SUMMARY.record("security_association", rejected_calling_ae=1, rejected_host=1,
                       security_alerts_audited=len(alerts))
    finally:
        node.kill()


@pytest.mark.reliability
@pytest.mark.skipif(OPENSSL is None, reason="openssl is needed to make the test certificates")
def test_mutual_tls_with_dcmtk(tmp_path: Path, tiny_model: Path, shared_data: Path) -> None:
    pki_dir = tmp_path / "pki"
    make_pki(pki_dir)
    explicit = [b for b in base_films(film_pngs(shared_data, 3)) if b.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"]
    (study,) = make_studies(explicit, 1, 4)           # storescu proposes explicit VR LE by default
    films = []
    for i, ds in enumerate(study):
        films.append(tmp_path / f"film{i}.dcm")
        ds.save_as(films[-1], enforce_file_format=True)
    port = free_port()
    cfg = write_config(tmp_path / "node.toml", port, tiny_model,
                       node={"allowed_calling_aets": ["TRUSTED"], "tls_enabled": True,
                             "tls_cert": str(pki_dir / "server.crt"), "tls_key": str(pki_dir / "server.key"),
                             "tls_ca": str(pki_dir / "ca.crt"), "quiet_period_s": 0.5},
                       logging={"level": "DEBUG"})
    probe_ctx = _client_ctx(pki_dir, "client")
    node = NodeProc(cfg, port, probe=lambda: echo(port, tls_args=(probe_ctx, "localhost")))
    # The rogue CA stands in for any CA the operating system trusts (SSL_CERT_FILE is where
    # OpenSSL looks for the system's CAs): a client certificate from it must still be refused.
    node_env = {"SSL_CERT_FILE": str(pki_dir / "rogue_ca.crt")}
    node.env = node_env
    node.start()
    try:
        tls = ["+tls", str(pki_dir / "client.key"), str(pki_dir / "client.crt"), "+cf", str(pki_dir / "ca.crt")]
        ok = _storescu(port, films[0], *tls)
        assert ok.returncode == 0, ok.stderr

        # a connection that never starts its handshake must not hold up anyone else
        idle = socket.create_connection(("127.0.0.1", port))
        try:
            t0 = time.monotonic()
            ok2 = _storescu(port, films[1], *tls)
            blocked_s = time.monotonic() - t0
            assert ok2.returncode == 0, f"an idle TLS connection blocked others: {ok2.stderr[-500:]}"
        finally:
            idle.close()

        refused = {
            "rogue_client_certificate": _storescu(port, films[2], "+tls", str(pki_dir / "rogue.key"),
                                                  str(pki_dir / "rogue.crt"), "+cf", str(pki_dir / "ca.crt")),
            "no_client_certificate": _storescu(port, films[2], "+tla", "+cf", str(pki_dir / "ca.crt")),
            "plain_tcp": _storescu(port, films[3]),
        }
        for name, r in refused.items():
            assert r.returncode != 0, f"{name} was accepted: {r.stdout}{r.stderr}"
        # pynetdicom with the rogue client certificate, for good measure
        rogue_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        rogue_ctx.load_verify_locations(cafile=str(pki_dir / "ca.crt"))
        rogue_ctx.load_cert_chain(str(pki_dir / "rogue.crt"), str(pki_dir / "rogue.key"))
        assert not echo(port, aet="TRUSTED", tls_args=(rogue_ctx, "localhost"))

        stored = {r["sop_instance_uid"] for r in node.db("SELECT sop_instance_uid FROM instances")}
        assert stored == {str(study[0].SOPInstanceUID), str(study[1].SOPInstanceUID)}
        wait_for(lambda: node.delivered_instances() >= stored, 60, 0.3, "the TLS-received study's result")
        assert node.stop() == 0, node.tail()
        assert phi_hits([node.log, node.state_dir / "audit.jsonl"]) == []
        SUMMARY.record("security_tls", instances_sent=4, acknowledged=len(stored), delivered=len(stored),
                       lost=0, accepted_with_site_certificate=2, refused=sorted(refused) + [
            "rogue_certificate_pynetdicom"], stored_instances=len(stored),
            idle_handshake_other_client_s=round(blocked_s, 1))
    finally:
        node.kill()


@pytest.mark.reliability
def test_no_phi_in_any_log_of_the_suite_and_audit_is_json_lines(tmp_path: Path, tiny_model: Path,
                                                                  shared_data: Path) -> None:
    """Runs last in the suite's order: searches every log the suite's nodes wrote so far,
    after a DEBUG-level node of its own has received PHI films and odd headers."""
    from support.reliability_harness import PHI_BIRTH, Sender, contexts_for

    studies = make_studies(base_films(film_pngs(shared_data, 3)), 2, 3)
    for ds in studies[1]:
        ds.PatientBirthDate = PHI_BIRTH                 # not a valid DA: libraries quote it
        ds.OtherPatientNames = ds.PatientName
        ds.PatientSex = "Wilhelmina"                    # not a valid CS either
    port = free_port()
    cfg = write_config(tmp_path / "node.toml", port, tiny_model,
                       node={"allowed_calling_aets": ["RELSCU"], "quiet_period_s": 0.5},
                       logging={"level": "DEBUG"})
    node = NodeProc(cfg, port).start()
    try:
        sender = Sender(port, contexts_for(ds for s in studies for ds in s))
        sender.send_all(studies, timeout=60)
        assert len(sender.acked()) == 6
        wait_for(lambda: [r["state"] for r in node.db("SELECT state FROM studies")] == ["triaged"] * 2,
                 60, 0.3, "both studies triaged")
        assert node.stop() == 0, node.tail()
        # the search itself works: a spooled film holds the PHI
        spooled = next((node.state_dir / "spool").rglob("*.dcm"))
        assert phi_hits([spooled]), "the PHI search found nothing in a film that carries PHI"
        logs = [p for p in LOG_FILES if p.exists()]
        assert node.log in logs and len(logs) >= 2
        hits = phi_hits(logs)
        assert hits == [], "\n".join(hits[:20])
        lines = 0
        for audit in (p for p in logs if p.name == "audit.jsonl"):
            for line in audit.read_text().splitlines():
                event = json.loads(line)
                assert {"ts", "event_id", "event", "outcome"} <= set(event)
                if event.get("direction") == "received" and event.get("outcome") == 0:
                    assert event.get("sop_instance_uid") and event.get("calling_ae")
                lines += 1
        received = {e["sop_instance_uid"] for e in node.audit()
                    if e.get("direction") == "received" and e.get("outcome") == 0
                    and e.get("calling_ae") == "RELSCU"}
        assert received == set(sender.acked())
        delivered = node.delivered_instances() & set(sender.acked())
        assert delivered == set(sender.acked())
        SUMMARY.record("phi_and_audit", log_files_scanned=len(logs), phi_markers=list(PHI_MARKERS),
                       phi_hits=len(hits), audit_lines_checked=lines, instances_sent=6,
                       acknowledged=len(sender.acked()), delivered=len(delivered),
                       lost=len(set(sender.acked()) - delivered))
    finally:
        node.kill()
