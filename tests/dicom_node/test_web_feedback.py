"""Radiologist feedback on the AI result (IHE AI Result Assessment style), through the API and
the study page's form: stored with who (per-user token, or a trusted reverse proxy's user
header), when, model version and threshold; audited; shown on the worklist; refused without a
named user. The node's state dir holds real triage results (``support.web_node``)."""

from __future__ import annotations

import pytest
from conftest import free_port
from fastapi.testclient import TestClient
from support.web_node import build_triaged_node

from cxr_triage.config import ConfigError, load_config
from cxr_triage.dicom_node.store.audit import AuditLog, read_audit
from cxr_triage.dicom_node.web.app import WebSettings, create_app
from cxr_triage.dicom_node.web.settings import WebConfigError, parse_user_tokens

ALICE, BOB = "alice-token-0123456789", "bob-token-0123456789ab"
SHARED = "shared-token-0123456789"


@pytest.fixture(scope="module")
def node(tmp_path_factory, tiny_model, shared_data, sample_dicoms):
    return build_triaged_node(tmp_path_factory.mktemp("feedbacknode"), tiny_model, shared_data,
                              sample_dicoms, n_suspicious=1, n_normal=1, down_port=free_port())


@pytest.fixture(scope="module")
def audit(node):
    log = AuditLog(node.dirs.root / "web_audit.jsonl")
    yield log
    log.close()


def _client(node, audit, **kw) -> TestClient:
    settings = WebSettings(state_dir=node.dirs.root, token=SHARED,
                           users=parse_user_tokens([f"dr.alice:{ALICE}", f"dr.bob:{BOB}"]), **kw)
    return TestClient(create_app(node.queries, node.cfg, settings=settings, audit=audit))


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _study(node, decision: str) -> str:
    return next(uid for uid, d in node.decisions.items() if d == decision)


def test_named_user_accepts_or_rejects_and_it_is_stored_audited_and_shown(node, audit):
    client = _client(node, audit)
    suspicious = _study(node, "suspicious")
    stored = node.queries.get_study(suspicious)
    r = client.post(f"/api/studies/{suspicious}/feedback", json={"verdict": "reject", "finding": "normal"},
                    headers=_auth(ALICE))
    assert r.status_code == 201, r.text
    fb = r.json()
    assert (fb["verdict"], fb["finding"], fb["user"]) == ("reject", "normal", "dr.alice")
    assert fb["result_id"] == stored["result_id"] and fb["decision"] == "suspicious"
    film = stored["result"]["films"][0]
    assert (fb["model_version"], fb["threshold"], fb["operating_point"]) == (
        film["model_version"], film["threshold"], film["operating_point"])
    assert fb["score"] == stored["score"] and fb["at"]
    # in the store, on the worklist row (the latest), and on the study's detail
    (kept,) = node.queries.feedback(suspicious)
    assert kept["user"] == "dr.alice" and kept["verdict"] == "reject"
    row = next(s for s in client.get("/api/studies", headers=_auth(BOB)).json()["studies"]
               if s["study_instance_uid"] == suspicious)
    assert (row["feedback_verdict"], row["feedback_user"]) == ("reject", "dr.alice")
    detail = client.get(f"/api/studies/{suspicious}", headers=_auth(BOB)).json()
    assert [f["user"] for f in detail["feedback"]] == ["dr.alice"]
    # audited with the user and UIDs, never patient data
    (event,) = [e for e in read_audit(audit.path) if e["event_id"] == "110110"]
    assert (event["user"], event["study_uid"], event["verdict"]) == ("dr.alice", suspicious, "reject")
    # the page: the form (named user) and the history
    page = client.get(f"/studies/{suspicious}", headers=_auth(BOB)).text
    assert 'id="feedback-form"' in page and "dr.bob" in page and "dr.alice" in page
    # the page's form posts and comes back to the study
    normal = _study(node, "likely_normal")
    r = client.post(f"/studies/{normal}/feedback", data={"verdict": "accept", "finding": ""},
                    headers=_auth(BOB), follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/studies/{normal}#feedback"
    assert node.queries.feedback(normal)[0]["user"] == "dr.bob"
    worklist = client.get("/", headers=_auth(BOB)).text
    assert "accepted" in worklist and "rejected" in worklist


def test_feedback_needs_a_named_user_and_valid_values(node, audit):
    client = _client(node, audit)
    uid = _study(node, "suspicious")
    r = client.post(f"/api/studies/{uid}/feedback", json={"verdict": "accept"}, headers=_auth(SHARED))
    assert r.status_code == 403 and "named login" in r.json()["detail"]
    assert 'id="feedback-login"' in client.get(f"/studies/{uid}", headers=_auth(SHARED)).text
    assert client.post(f"/api/studies/{uid}/feedback", json={"verdict": "maybe"},
                       headers=_auth(ALICE)).status_code == 400
    assert client.post(f"/api/studies/{uid}/feedback", json={"verdict": "accept", "finding": "tumour"},
                       headers=_auth(ALICE)).status_code == 400
    assert client.post("/api/studies/1.2.3.999/feedback", json={"verdict": "accept"},
                       headers=_auth(ALICE)).status_code == 404
    assert client.post(f"/api/studies/{uid}/feedback", json={"verdict": "accept"}).status_code == 401


def test_trusted_reverse_proxy_user_header(node, audit):
    uid = _study(node, "likely_normal")
    # TestClient's requests come from the address "testclient"
    proxied = _client(node, audit, trusted_user_header="X-Remote-User", trusted_proxies=("testclient",))
    r = proxied.post(f"/api/studies/{uid}/feedback", json={"verdict": "accept"},
                     headers={"X-Remote-User": "dr.carol"})
    assert r.status_code == 201 and r.json()["user"] == "dr.carol"
    # the same header from an address that is not a trusted proxy is ignored
    direct = _client(node, audit, trusted_user_header="X-Remote-User", trusted_proxies=("10.0.0.1",))
    assert direct.post(f"/api/studies/{uid}/feedback", json={"verdict": "accept"},
                       headers={"X-Remote-User": "dr.mallory"}).status_code == 401


def test_user_tokens_are_checked_at_start():
    assert parse_user_tokens(["a.b@x:0123456789abcdef"]) == {"0123456789abcdef": "a.b@x"}
    for bad in (["nocolon"], ["x:short"], [":0123456789abcdef"]):
        with pytest.raises(ValueError):
            parse_user_tokens(bad)
    with pytest.raises(ConfigError, match="user_tokens"):
        load_config(environ={"CXR_TRIAGE__WEB__USER_TOKENS": "alice:short"})
    # named logins protect an exposed worklist as a shared token does
    WebSettings(host="0.0.0.0", users={"0123456789abcdef": "a"})
    with pytest.raises(WebConfigError):
        create_app(object(), settings=WebSettings(host="0.0.0.0"))
