"""The worklist for people: accession number and patient name/ID on the page and in
``/api/studies`` (read from the films' headers), never in logs or metrics; served over HTTPS
off loopback (plain HTTP there is refused at start)."""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from conftest import free_port
from fastapi.testclient import TestClient
from pydicom import dcmread
from support.web_node import build_triaged_node

from cxr_triage.dicom_node.web.app import WebConfigError, WebSettings, create_app, start_web
from cxr_triage.dicom_node.web.views import person_name


@pytest.fixture(scope="module")
def node(tmp_path_factory, tiny_model, shared_data, sample_dicoms):
    return build_triaged_node(tmp_path_factory.mktemp("peoplenode"), tiny_model, shared_data,
                              sample_dicoms, n_suspicious=1, n_normal=2, down_port=free_port())


def _headers(node, study_uid: str):
    return dcmread(node.queries.first_instance_path(study_uid), stop_before_pixels=True)


def test_accession_and_patient_on_the_page_and_in_the_api_not_in_logs_or_metrics(node, caplog):
    caplog.set_level(logging.DEBUG)
    client = TestClient(create_app(node.queries, node.cfg, settings=WebSettings(state_dir=node.dirs.root)))
    studies = client.get("/api/studies").json()["studies"]
    assert len(studies) == len(node.decisions)
    phi: set[str] = set()
    for row in studies:
        hdr = _headers(node, row["study_instance_uid"])
        expected = (str(hdr.get("AccessionNumber", "")) or None, str(hdr.PatientID), str(hdr.PatientName))
        assert (row["accession_number"], row["patient_id"], row["patient_name"]) == expected
        phi |= {v for v in expected if v}
    made_up = next(r for r in studies if r["accession_number"] and r["accession_number"].startswith("ACC"))
    uid = made_up["study_instance_uid"]
    detail = client.get(f"/api/studies/{uid}").json()
    assert detail["accession_number"] == made_up["accession_number"]
    page = client.get("/").text
    assert made_up["accession_number"] in page and person_name(made_up["patient_name"]) in page
    study_page = client.get(f"/studies/{uid}").text
    assert made_up["patient_id"] in study_page and made_up["accession_number"] in study_page
    # never in metrics (labels are model and decisions only) nor in any log record
    metrics = client.get("/metrics").text
    logged = "\n".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    for value in phi:
        assert value not in metrics, value
        assert value not in logged, value


def test_identity_of_a_study_not_yet_triaged_comes_from_its_spooled_header(node, tmp_path):
    """A study still receiving shows who it is already (read from its first instance)."""
    from pydicom.uid import generate_uid
    from support.web_node import add_file

    from cxr_triage.dicom_node.store.spool import Spool

    film = next((Path(node.cfg.node.state_dir).parent / "films").glob("*.dcm"))   # a wrapped NIH film
    ds = dcmread(film)
    ds.StudyInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.AccessionNumber = "Waiting^Wendy", "PID-WAIT", "ACC-WAIT"
    path = tmp_path / "waiting.dcm"
    ds.save_as(path)
    uid = add_file(node.store, Spool(node.dirs.spool), path, received_at=1.0)
    client = TestClient(create_app(node.queries, node.cfg, settings=WebSettings(state_dir=node.dirs.root)))
    row = next(r for r in client.get("/api/studies").json()["studies"] if r["study_instance_uid"] == uid)
    assert (row["decision"], row["accession_number"], row["patient_id"], row["patient_name"]) == (
        "pending", "ACC-WAIT", "PID-WAIT", "Waiting^Wendy")


def test_person_names_as_people_write_them():
    assert person_name("Doe^Jane^M^Dr^Jr") == "Doe, Dr Jane M Jr"
    assert person_name("Doe") == "Doe" and person_name("") == "" and person_name(None) == ""
    assert person_name("Yamada^Tarou=山田^太郎") == "Yamada, Tarou"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI needed to make a certificate")
def test_https_off_loopback_and_plain_http_refused(node, tmp_path):
    key, crt = tmp_path / "web.key", tmp_path / "web.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", crt,
                    "-subj", "/CN=worklist", "-days", "2", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    token = "people-test-token-0123456789"
    # off loopback without TLS: refused at start, naming what to set
    with pytest.raises(WebConfigError, match="tls_cert"):
        start_web(node.cfg.replace(web={"host": "0.0.0.0", "port": 0, "token": token}), node.queries)
    with pytest.raises(WebConfigError, match="together"):
        start_web(node.cfg.replace(web={"port": 0, "tls_cert": str(crt)}), node.queries)
    # with a certificate: HTTPS on every address, the login cookie marked Secure
    server = start_web(node.cfg.replace(web={"host": "0.0.0.0", "port": 0, "token": token,
                                             "tls_cert": str(crt), "tls_key": str(key)}), node.queries)
    try:
        assert server.url.startswith("https://")
        url = f"https://127.0.0.1:{server.port}"
        with httpx.Client(verify=str(crt), timeout=10) as https:
            r = https.get(url + "/api/studies", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200 and r.json()["count"] >= len(node.decisions)
            assert https.get(url + "/api/studies").status_code == 401
            login = https.post(url + "/login", data={"token": token, "next": "/"}, follow_redirects=False)
            assert login.status_code == 303 and "secure" in login.headers["set-cookie"].lower()
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{server.port}/api/studies", timeout=5,
                      headers={"Authorization": f"Bearer {token}"}).raise_for_status()
    finally:
        server.stop()
    # behind a TLS reverse proxy that names the user, plain HTTP to the proxy is allowed
    proxied = start_web(node.cfg.replace(web={"host": "0.0.0.0", "port": 0,
                                              "trusted_user_header": "X-Remote-User"}), node.queries)
    proxied.stop()
