"""Bad input: every malformed, odd or out-of-scope object gets the right answer, and the node
keeps serving.

The corpus (tests/reliability_corpus.py) is generated from a real film: truncated files,
missing and corrupt pixel data, wrong declared transfer syntaxes, decompression bombs,
non-image and non-triage SOP classes, multi-frame, colour, odd VRs and character sets, bad
UIDs. Each is sent byte for byte on its own association. Between them the node gets random
bytes, truncated and malformed PDUs and abrupt disconnects on raw sockets, and must answer
C-ECHO after each. Malformed objects must be refused with an error status or reported not
assessable (undecodable), and kept in quarantine either way; out-of-scope objects get a
not-assessable result with their reason. A good film sent last is triaged normally.
"""

from __future__ import annotations

import json
import random
import socket
import time
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLosslessSV1, JPEGLSLossless, RLELossless
from pynetdicom import AE, _config
from support.reliability_corpus import (
    HANDLED,
    IGNORED,
    NOT_ASSESSABLE,
    REFUSAL_STATUSES,
    REFUSED,
    REFUSED_OR_UNDECODABLE,
    TRIAGED,
    UNDECODABLE,
    Case,
    build_corpus,
    raw_abuses,
)
from support.reliability_harness import (
    NODE_AET,
    PHI_ID,
    PHI_NAME,
    SUMMARY,
    NodeProc,
    echo,
    film_pngs,
    free_port,
    new_instance,
    phi_hits,
    wait_for,
    write_config,
)

from cxr_triage.dicom_node.delivery.scu import associate
from cxr_triage.dicom_node.receive.server import ACSE_TIMEOUT_S

CALLING = "RELSCU"
MAX_ASSOCIATIONS = 4


def _film(png: Path, ts: str):
    from cxr_triage.dicom_node.tools.film_to_dicom import png_to_dicom

    return png_to_dicom(png, sop_class="DX_PRES", transfer_syntax_uid=ts, bits_stored=12,
                        patient_name=PHI_NAME, patient_id=PHI_ID)


def _send_raw(port: int, case: Case, path: Path) -> int | None:
    """Send the file's bytes as they are, under the transfer syntax its meta declares."""
    path.write_bytes(case.data)
    ae = AE(ae_title=CALLING)
    ae.add_requested_context(case.sop_class_uid, case.transfer_syntax)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = associate(ae, "127.0.0.1", port, ae_title=NODE_AET)
    assert assoc.is_established, f"{case.name}: association refused"
    try:
        st = assoc.send_c_store(path)
        return getattr(st, "Status", None) if st else None
    finally:
        if assoc.is_established:
            assoc.release()


@pytest.mark.reliability
def test_bad_input_gets_the_right_answer_and_the_node_keeps_serving(
        tmp_path: Path, tiny_model: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(8)
    pngs = film_pngs(shared_data, 2)
    native = _film(pngs[0], ExplicitVRLittleEndian)
    corpus = build_corpus(native, _film(pngs[1], JPEGLSLossless), _film(pngs[1], JPEG2000Lossless),
                          _film(pngs[1], JPEGLosslessSV1), _film(pngs[0], RLELossless), rng)
    abuses = raw_abuses(native)
    port = free_port()
    cfg = write_config(tmp_path / "node.toml", port, tiny_model,
                       node={"allowed_calling_aets": [CALLING], "quiet_period_s": 0.5,
                             "max_associations": MAX_ASSOCIATIONS})
    node = NodeProc(cfg, port).start()
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)   # send bytes as they are
    statuses: dict[str, int | None] = {}
    try:
        abuse_names = list(abuses)
        for i, case in enumerate(corpus):
            statuses[case.name] = _send_raw(port, case, tmp_path / f"{case.name}.dcm")
            if i < len(abuse_names):
                abuses[abuse_names[i]](port, CALLING, NODE_AET, rng)
                assert echo(port), f"node stopped answering after {abuse_names[i]}:\n{node.tail()}"
        assert len(corpus) >= len(abuse_names)
        # connections that never associate (TCP health checks, scans) must not lock senders out
        for _ in range(MAX_ASSOCIATIONS + 2):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        t0 = time.monotonic()
        wait_for(lambda: echo(port), 30, 0.2, "an association after a connection flood")
        flood_lockout_s = time.monotonic() - t0
        assert flood_lockout_s <= ACSE_TIMEOUT_S + 5, flood_lockout_s
        good = new_instance(native, "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2", 1)
        good_case = Case("good_film", b"", str(good.SOPClassUID), str(good.SOPInstanceUID),
                         str(good.StudyInstanceUID), ExplicitVRLittleEndian, TRIAGED)
        monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", False)
        ae = AE(ae_title=CALLING)
        ae.add_requested_context(good.SOPClassUID, ExplicitVRLittleEndian)
        assoc = associate(ae, "127.0.0.1", port, ae_title=NODE_AET)
        statuses["good_film"] = assoc.send_c_store(good).Status
        assoc.release()

        def settled() -> bool:
            rows = node.db("SELECT state FROM studies")
            return rows and all(r["state"] in ("triaged", "failed") for r in rows) and any(
                r["study_uid"] == good_case.study_uid for r in node.db("SELECT study_uid FROM studies"))

        wait_for(settled, 120, 0.3, "every study triaged")
        assert node.stop() == 0, node.tail()

        films = {}
        for row in node.db("SELECT r.result_json FROM studies s JOIN results r ON r.id=s.result_id"):
            for f in json.loads(row["result_json"])["films"]:
                films[f["sop_instance_uid"]] = f
        instances = {r["sop_instance_uid"] for r in node.db("SELECT sop_instance_uid FROM instances")}
        qdir = node.state_dir / "quarantine"
        quarantined: dict[str, dict] = {}
        for meta in qdir.glob("*.json"):
            entry = json.loads(meta.read_text())
            quarantined.setdefault(str(entry.get("sop_instance_uid")), entry)
        assert node.db("SELECT COUNT(*) AS n FROM studies WHERE state='failed'")[0]["n"] == 0

        outcomes, failures = {}, []
        for case in [*corpus, good_case]:
            st = statuses[case.name]
            film = films.get(case.sop_instance_uid)
            q = quarantined.get(case.sop_instance_uid)
            outcomes[case.name] = {"status": None if st is None else f"0x{st:04X}",
                                   "decision": film and film["decision"], "reason": film and film["reason"],
                                   "quarantined": q is not None}
            refused = st in REFUSAL_STATUSES and q is not None and case.sop_instance_uid not in instances
            undecodable = (st == 0 and film is not None and film["decision"] == "not_assessable"
                           and film["reason"] == "undecodable" and q is not None)
            triaged = st == 0 and film is not None and (
                film["decision"] != "not_assessable" or (film["reason"] is not None and (
                    film["reason"] != "undecodable" or q is not None)))
            ok = {
                HANDLED: refused or undecodable or triaged,
                REFUSED: refused,
                REFUSED_OR_UNDECODABLE: refused or undecodable,
                UNDECODABLE: undecodable,
                NOT_ASSESSABLE: st == 0 and film is not None and film["decision"] == "not_assessable"
                and film["reason"] in case.reasons and (film["reason"] != "undecodable" or q is not None),
                IGNORED: st == 0 and case.sop_instance_uid not in instances and film is None,
                TRIAGED: triaged,
            }[case.expect] and (q is not None or not case.quarantine)
            if not ok:
                failures.append(f"{case.name} (expected {case.expect}): {outcomes[case.name]}")
            if q is not None and st == 0:
                assert (qdir / f"{q['id']}.dcm").is_file(), case.name
        assert failures == [], "\n".join(failures)
        assert films[good_case.sop_instance_uid]["decision"] in ("suspicious", "likely_normal")

        # every acknowledged instance is accounted for in a delivered result (SRs are skipped
        # by design: a PACS echoing results back must not loop)
        acked = {c.sop_instance_uid for c in [*corpus, good_case] if statuses[c.name] == 0}
        ignored = {c.sop_instance_uid for c in corpus if c.expect == IGNORED}
        delivered = node.delivered_instances() & acked
        lost = acked - ignored - delivered
        assert lost == set(), lost
        hits = phi_hits([node.log, node.state_dir / "audit.jsonl", *qdir.glob("*.json")])
        assert hits == [], "\n".join(hits[:20])
        SUMMARY.record("bad_input", malformed_inputs_tried=len(corpus) + len(abuses) + 1,
                       corpus_objects=len(corpus), socket_abuses=len(abuses) + 1,
                       lockout_after_connection_flood_s=round(flood_lockout_s, 1),
                       quarantined=len(list(qdir.glob("*.json"))), outcomes=outcomes,
                       instances_sent=len(corpus) + 1, acknowledged=len(acked), delivered=len(delivered),
                       ignored_by_design=len(ignored & acked), lost=len(lost))
    finally:
        node.kill()
