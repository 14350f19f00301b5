"""STOW-RS receive (PS3.18 10.5) on the node's web server, and STOW-RS delivery: in process,
over real HTTP on loopback, with dicomweb-client, requests and curl as the senders.

Each malformed body gets the standard's status and leaves nothing half-stored: no spool file,
no job-store row, nothing left in ``.incoming/``; what could be read is quarantined.
"""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.uid import generate_uid
from support.receive_support import instance_of_size

from cxr_triage.config import load_config
from cxr_triage.dicom_node.delivery.stow_send import send_stow
from cxr_triage.dicom_node.service.node import Node
from cxr_triage.dicom_node.store.audit import read_audit
from cxr_triage.dicom_node.store.jobs import DueDelivery, ResultObject

TOKEN = "stow-test-token-0123456789"
BOUNDARY = "cxr-triage-test-boundary"
FAILED, REFERENCED, REASON = "00081198", "00081199", "00081197"


@pytest.fixture
def node(tmp_path: Path, model_path: Path) -> Any:
    cfg = load_config(environ={}).replace(
        node={"host": "127.0.0.1", "port": 0, "state_dir": str(tmp_path / "state"), "quiet_period_s": 30.0,
              "max_instance_bytes": 300_000},
        inference={"model_path": str(model_path), "threads": 1},
        delivery={"summary_image": False},
        web={"enabled": True, "host": "127.0.0.1", "port": 0, "token": TOKEN})
    n = Node(cfg).start()
    assert n.web is not None
    yield n
    n.stop(timeout_s=5)


def _client(node: Node) -> DICOMwebClient:
    client = DICOMwebClient(url=f"{node.web.url}/dicomweb", headers={"Authorization": f"Bearer {TOKEN}"})
    client.set_http_retry_params(retry=False)
    return client


def _body(*parts: tuple[str, bytes], boundary: str = BOUNDARY, close: bool = True) -> bytes:
    out = b""
    for ctype, data in parts:
        out += f"--{boundary}\r\nContent-Type: {ctype}\r\n\r\n".encode() + data + b"\r\n"
    return out + (f"--{boundary}--\r\n".encode() if close else b"")


def _post(node: Node, body: bytes, *, path: str = "/dicomweb/studies", boundary: str = BOUNDARY,
          token: str = TOKEN, ctype: str | None = None) -> requests.Response:
    ctype = ctype or f'multipart/related; type="application/dicom"; boundary={boundary}'
    return requests.post(node.web.url + path, data=body, timeout=30,
                         headers={"Content-Type": ctype, "Authorization": f"Bearer {token}"})


def _reasons(reply: dict[str, Any]) -> list[int]:
    return [item[REASON]["Value"][0] for item in reply.get(FAILED, {}).get("Value", [])]


def _stored_uids(reply: dict[str, Any]) -> list[str]:
    return [item["00081155"]["Value"][0] for item in reply.get(REFERENCED, {}).get("Value", [])]


def _nothing_left(node: Node, *sop_uids: str) -> None:
    """No row, no spool file and no incoming leftover for these instances."""
    for uid in sop_uids:
        assert node.store.stored_instance(uid) is None
    assert not [p for p in node.spool.incoming.glob("*") if p.is_file()]


def _instance(tmp_path: Path, name: str, size: int = 20_000, **kw: Any) -> Path:
    return instance_of_size(tmp_path / f"{name}.dcm", size, **kw)


def test_dicomweb_client_stores_a_study_durably_and_audited(node: Node, tmp_path: Path) -> None:
    study = generate_uid()
    files = [_instance(tmp_path, f"i{n}", seed=n, study=study) for n in range(2)]
    reply = _client(node).store_instances([dcmread(f) for f in files], study_instance_uid=study)
    uids = [str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    assert sorted(str(i.ReferencedSOPInstanceUID) for i in reply.ReferencedSOPSequence) == sorted(uids)
    assert "FailedSOPSequence" not in reply
    for uid in uids:                          # acknowledged = in the spool and in the job store
        rec = node.store.stored_instance(uid)
        assert rec is not None and rec.study_uid == study and Path(rec.path).is_file()
    again = _client(node).store_instances([dcmread(files[0])])     # identical re-send: 200 again
    assert len(again.ReferencedSOPSequence) == 1
    events = [e for e in read_audit(node.dirs.audit_log) if e.get("service") == "STOW-RS"]
    assert {e["sop_instance_uid"] for e in events if e.get("direction") == "received"} == set(uids)


def test_login_and_media_type_are_required(node: Node, tmp_path: Path) -> None:
    body = _body(("application/dicom", _instance(tmp_path, "a").read_bytes()))
    refused = _post(node, body, token="wrong-token-0123456789")
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    assert "Authorization: Bearer" in refused.json()["detail"]   # what a sending PACS must add
    assert _post(node, body, ctype="application/dicom").status_code == 415
    assert _post(node, body, ctype=f'multipart/related; type="application/dicom+xml"; boundary={BOUNDARY}'
                 ).status_code == 415
    assert _post(node, body, ctype='multipart/related; type="application/dicom"').status_code == 400


def test_unreadable_reason_keeps_library_advice_out() -> None:
    from pydicom.errors import InvalidDicomError

    from cxr_triage.dicom_node.receive.statuses import NOT_DICOM, unreadable_reason

    assert unreadable_reason("cannot parse dataset", InvalidDicomError("no header. Use force=True to force reading.")
                             ) == NOT_DICOM
    assert unreadable_reason("cannot parse dataset", ValueError("bad tag. Use force=True to force reading.")
                             ) == "cannot parse dataset: bad tag."


def test_wrong_boundary_is_a_bad_request_with_nothing_stored(node: Node, tmp_path: Path) -> None:
    path = _instance(tmp_path, "b")
    uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    got = _post(node, _body(("application/dicom", path.read_bytes()), boundary="another"))
    assert got.status_code == 400
    assert "wrong boundary" in got.text          # says what is wrong, not "truncated"
    _nothing_left(node, uid)


def test_a_non_dicom_part_fails_0xC000_beside_a_stored_one(node: Node, tmp_path: Path) -> None:
    good = _instance(tmp_path, "good")
    got = _post(node, _body(("application/dicom", good.read_bytes()),
                            ("application/dicom", b"this is not DICOM at all" * 20),
                            ("text/plain", b"nor is this")))
    assert got.status_code == 202 and got.headers["content-type"] == "application/dicom+json"
    reply = got.json()
    assert _stored_uids(reply) == [str(dcmread(good, stop_before_pixels=True).SOPInstanceUID)]
    assert _reasons(reply) == [0xC000, 0xC000]
    entries = node.quarantine.entries()
    assert len(entries) == 2
    assert not [e for e in entries if "force=True" in str(e)]      # our words, not pydicom's advice
    assert any(str(e.get("reason", "")).startswith("not a DICOM data set") for e in entries)
    _nothing_left(node)


def test_truncated_part_is_quarantined_not_stored(node: Node, tmp_path: Path) -> None:
    path = _instance(tmp_path, "t")
    uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    data = path.read_bytes()
    got = _post(node, _body(("application/dicom", data[: len(data) // 2]), close=False)[:-2])
    assert got.status_code == 409 and _reasons(got.json()) == [0xC000]
    _nothing_left(node, uid)
    assert len(node.quarantine.entries()) == 1


def test_oversized_part_is_refused_0xA700_and_a_study_mismatch_0xA900(node: Node, tmp_path: Path) -> None:
    big = _instance(tmp_path, "big", size=400_000)            # over max_instance_bytes (300 000)
    other = _instance(tmp_path, "other")
    got = _post(node, _body(("application/dicom", big.read_bytes()), ("application/dicom", other.read_bytes())),
                path=f"/dicomweb/studies/{generate_uid()}")
    assert got.status_code == 409 and sorted(_reasons(got.json())) == [0xA700, 0xA900]
    _nothing_left(node, *(str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in (big, other)))
    conn = http.client.HTTPConnection(node.web.host, node.web.port, timeout=30)   # declares 1 TB, sends none
    conn.putrequest("POST", "/dicomweb/studies")
    for name, value in (("Content-Type", f"multipart/related; boundary={BOUNDARY}"),
                        ("Authorization", f"Bearer {TOKEN}"), ("Content-Length", str(10**12))):
        conn.putheader(name, value)
    conn.endheaders()
    assert conn.getresponse().status == 413
    conn.close()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_posts_a_truncated_body(node: Node, tmp_path: Path) -> None:
    path = _instance(tmp_path, "c")
    body = tmp_path / "body.bin"
    body.write_bytes(_body(("application/dicom", path.read_bytes()))[:-200])
    out = subprocess.run(["curl", "-s", "-w", "\n%{http_code}", "-X", "POST", "--data-binary", f"@{body}",
                          "-H", f'Content-Type: multipart/related; type="application/dicom"; boundary={BOUNDARY}',
                          "-H", f"Authorization: Bearer {TOKEN}", f"{node.web.url}/dicomweb/studies"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    reply, code = out.rsplit("\n", 1)
    assert code == "409" and _reasons(json.loads(reply)) == [0xC000]
    _nothing_left(node, str(dcmread(path, stop_before_pixels=True).SOPInstanceUID))


def test_stow_delivery_judges_each_answer(node: Node, tmp_path: Path) -> None:
    """send_stow against the node's own endpoint: stored (an SR is acknowledged, never triaged),
    a refused request (no login) is permanent, a closed port is transient."""
    sr = tmp_path / "result.dcm"
    shutil.copy(_instance(tmp_path, "r"), sr)
    ds = dcmread(sr, stop_before_pixels=True)
    obj = ResultObject(str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPClassUID), str(sr))
    item = DueDelivery(id=1, result_id=1, study_uid=str(ds.StudyInstanceUID), destination="", attempts=0,
                       created_at=0.0, objects=(obj,))
    cfg = node.cfg
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {TOKEN}"
    ok = send_stow([item], f"dicomweb:{node.web.url}/dicomweb", cfg, session=session)[1]
    assert ok.error is None and ok.sent == (obj,)
    refused = send_stow([item], f"dicomweb:{node.web.url}/dicomweb", cfg)[1]
    assert refused.error is not None and "401" in refused.error and refused.permanent
    down = send_stow([item], "dicomweb:http://127.0.0.1:9/dicomweb", cfg)[1]
    assert down.error == "STOW-RS: connection refused" and not down.permanent   # the cause, as for DIMSE


def test_multipart_reader_any_chunking() -> None:
    """The same parts whatever the chunk size (a delimiter straddling two chunks included)."""
    from cxr_triage.dicom_node.receive.multipart import MultipartReader, PartData, PartEnd, PartStart

    payloads = [b"\r\n--not-the-boundary\r\n" + bytes(range(256)) * 3, b"", b"tail\r\n-"]
    body = b"preamble\r\n" + _body(*(("application/dicom", p) for p in payloads)) + b"epilogue"
    for size in (1, 2, 7, 64, len(body)):
        reader, parts = MultipartReader(BOUNDARY.encode()), []
        for at in range(0, len(body), size):
            for event in reader.feed(body[at:at + size]):
                if isinstance(event, PartStart):
                    parts.append(b"")
                elif isinstance(event, PartData):
                    parts[-1] += event.data
                else:
                    assert isinstance(event, PartEnd)
        reader.close()
        assert parts == payloads, size


def test_stow_destinations_follow_the_delivery_rules(tmp_path: Path, model_path: Path,
                                                     sample_dicoms: dict[str, Path]) -> None:
    """A film received over STOW-RS is triaged; its result goes to two DICOMweb destinations:
    one that refuses (the node's own endpoint, no login: 401) is ``refused``, one that does not
    answer (a closed port) stays ``pending`` with back-off: per object, as for C-STORE."""
    from support.node_peers import free_port, wait_for

    web_port = free_port()
    refusing, silent = f"dicomweb:http://127.0.0.1:{web_port}/dicomweb", "dicomweb:http://127.0.0.1:9/dicomweb"
    cfg = load_config(environ={}).replace(
        node={"host": "127.0.0.1", "port": 0, "state_dir": str(tmp_path / "state"), "quiet_period_s": 0.2},
        inference={"model_path": str(model_path), "threads": 1},
        delivery={"summary_image": False, "destinations": [refusing, silent], "retry_initial_s": 30.0},
        web={"enabled": True, "host": "127.0.0.1", "port": web_port, "token": TOKEN})
    n = Node(cfg).start()
    try:
        film = dcmread(sample_dicoms["nih_gcp_dx_chest_nofinding"])
        assert len(_client(n).store_instances([film]).ReferencedSOPSequence) == 1

        def settled() -> Any:
            study = n.queries.get_study(str(film.StudyInstanceUID))
            states = {d["destination"]: d["state"] for d in (study or {}).get("deliveries", [])
                      if d.get("attempts")}
            return states if len(states) == 2 else None
        states = wait_for(settled, 60, 0.2, "both deliveries attempted")
        assert states == {refusing: "refused", silent: "pending"}
    finally:
        n.stop(timeout_s=5)


def test_a_stopping_node_answers_503(node: Node, tmp_path: Path) -> None:
    node.handler.accepting = False                  # what Node.stop does first
    got = _post(node, _body(("application/dicom", _instance(tmp_path, "s").read_bytes())))
    assert got.status_code == 503
    node.handler.accepting = True
