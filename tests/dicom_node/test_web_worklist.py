"""Worklist order, the max-wait cap, filters, the study API and pictures, on a JobStore holding
real triage results of sample films (see web_node.py) by the tiny model with a nodule/mass
output, through FastAPI's TestClient."""

from __future__ import annotations

import datetime as dt
import io
import re
import time
from collections import Counter

import numpy as np
import pytest
from conftest import free_port
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from PIL import Image
from support.web_node import build_triaged_node

from cxr_triage.contract.result import Decision
from cxr_triage.contract.study import Outcome, ResultPart, StudyRecord
from cxr_triage.dicom_node.store.heatmaps import heatmap_path
from cxr_triage.dicom_node.web.app import WebSettings, create_app
from cxr_triage.dicom_node.web.worklist import BANDS, band, order_worklist

RANK = {b: i for i, b in enumerate(BANDS)}


@pytest.fixture(scope="module")
def node(tmp_path_factory, tiny_nodule_model, shared_data, sample_dicoms):
    return build_triaged_node(tmp_path_factory.mktemp("webnode"), tiny_nodule_model, shared_data,
                              sample_dicoms, down_port=free_port())


def _settings(node, **kw) -> WebSettings:
    base = dict(state_dir=node.dirs.root, max_wait_s=120 * 60.0)
    base.update(kw)
    return WebSettings(**base)


@pytest.fixture(scope="module")
def client(node):
    return TestClient(create_app(node.queries, node.cfg, settings=_settings(node)))


# ----------------------------------------------------------------------- ordering logic
def _entry(uid: str, decision: str | None, age_s: float, now: float) -> StudyRecord:
    result = ResultPart(outcome=Outcome(decision=Decision(decision))) if decision else None
    return StudyRecord(study_uid=uid, state="triaged" if decision else "receiving", received_at=now - age_s,
                       result=result)


def test_max_wait_boundary_lifts_a_likely_normal_study_to_the_top():
    now = 1_000_000.0
    entries = [
        _entry("1.1", "suspicious", 60, now),
        _entry("1.2", "likely_normal", 119 * 60, now),   # just under the cap
        _entry("1.3", "not_assessable", 30, now),
        _entry("1.4", None, 10, now),                     # still being triaged
        _entry("1.5", "likely_normal", 120 * 60, now),    # at the cap
    ]
    order = [(b, e.study_uid) for b, e in order_worklist(entries, now, 120 * 60)]
    assert order == [("overdue", "1.5"), ("suspicious", "1.1"), ("not_assessable", "1.3"),
                     ("pending", "1.4"), ("likely_normal", "1.2")]
    # cap off: the long-waiting likely normal study stays in its band (oldest first there)
    off = [e.study_uid for _, e in order_worklist(entries, now, 0)]
    assert off == ["1.1", "1.3", "1.4", "1.5", "1.2"]


@hsettings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["suspicious", "not_assessable", "likely_normal", None]),
                          st.floats(0, 10 * 3600)), max_size=30),
       st.sampled_from([0.0, 600.0, 7200.0]))
def test_order_properties(rows, max_wait_s):
    now = 5_000_000.0
    entries = [_entry(f"2.{i}", d, a, now) for i, (d, a) in enumerate(rows)]
    ordered = order_worklist(entries, now, max_wait_s)
    assert sorted(e.study_uid for _, e in ordered) == sorted(e.study_uid for e in entries)
    keys = [(RANK[b], e.received_at) for b, e in ordered]
    assert keys == sorted(keys)  # bands in order, the longest wait first within a band
    for b, e in ordered:
        over = max_wait_s > 0 and now - e.received_at >= max_wait_s and e.status != "suspicious"
        assert (b == "overdue") == over
        assert b == band(e, now, max_wait_s)


# ------------------------------------------------------------------------- JSON API
def test_api_orders_real_results_and_lifts_the_overdue_study(node, client):
    body = client.get("/api/studies").json()
    rows = body["studies"]
    assert body["count"] == len(rows) == len(node.decisions)
    assert {r["study_instance_uid"]: r["decision"] for r in rows} == node.decisions
    assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
    # The likely-normal study received 3 h ago passed the 2 h cap: first, marked overdue.
    assert rows[0]["study_instance_uid"] == node.old_normal
    assert rows[0]["decision"] == "likely_normal" and rows[0]["overdue"] and rows[0]["band"] == "overdue"
    rest = rows[1:]
    keys = [(RANK[r["band"]], r["received_at"]) for r in rest]
    assert keys == sorted(keys)
    assert [r["decision"] for r in rest] == sorted((r["decision"] for r in rest),
                                                    key=["suspicious", "not_assessable", "likely_normal"].index)
    assert all(r["wait_minutes"] < 120 for r in rest)


def test_without_the_cap_the_old_normal_study_waits_behind_the_others(node):
    app = create_app(node.queries, node.cfg, settings=_settings(node, max_wait_s=0.0))
    rows = TestClient(app).get("/api/studies").json()["studies"]
    assert rows[0]["decision"] == "suspicious"
    normals = [r for r in rows if r["decision"] == "likely_normal"]
    assert rows[-len(normals):] == normals and normals[0]["study_instance_uid"] == node.old_normal
    assert not any(r["overdue"] for r in rows)


def test_api_filters_by_decision_and_day(node, client):
    want = Counter(node.decisions.values())
    for decision, n in want.items():
        rows = client.get("/api/studies", params={"decision": decision}).json()["studies"]
        assert len(rows) == n and {r["decision"] for r in rows} == {decision}
    two = client.get("/api/studies", params=[("decision", "suspicious"), ("decision", "not_assessable")])
    assert two.json()["count"] == want["suspicious"] + want["not_assessable"]
    day = dt.date.fromtimestamp(node.received[node.old_normal])
    rows = client.get("/api/studies", params={"date_from": day.isoformat(), "date_to": day.isoformat()}).json()["studies"]
    expected = {u for u, t in node.received.items() if dt.date.fromtimestamp(t) == day}
    assert {r["study_instance_uid"] for r in rows} == expected and node.old_normal in expected
    tomorrow = dt.date.today() + dt.timedelta(days=1)
    assert client.get("/api/studies", params={"date_from": tomorrow.isoformat()}).json()["count"] == 0
    assert client.get("/api/studies", params={"date_from": "not-a-date"}).status_code == 422


def test_api_study_has_films_sr_in_words_and_delivery_history(node, client):
    failing = client.get(f"/api/studies/{node.failing_study}").json()
    stored = node.queries.get_study(node.failing_study)
    assert failing["decision"] == stored["decision"] == "suspicious"
    assert failing["delivery_status"] == "failing"
    outcomes = {(d["destination"], d["outcome"]) for d in failing["deliveries"]}
    assert ("outbox (SR)", "delivered") in outcomes                 # each object on its own
    assert ("outbox (summary image)", "delivered") in outcomes
    down = [d for d in failing["deliveries"] if d["destination"].startswith("DOWNPACS@")]
    assert down[0]["outcome"] == "failed" and down[-1]["outcome"] == "retry scheduled"
    assert failing["model_version"] == node.model_version
    # The SR as the PACS got it, read back: its decision and score are the study's.
    assert failing["result_summary"][0].startswith("The AI triage report sent to PACS calls this study suspicious")
    assert f"{stored['score']:.3f}" in failing["result_summary"][0]
    concepts = {line["concept"] for line in failing["result_sr"]}
    assert {"Imaging Measurement Report", "Finding", "Image Region"} <= concepts

    two = next(u for u in node.decisions if node.queries.get_study(u)["n_instances"] == 2)
    detail = client.get(f"/api/studies/{two}").json()
    result = {f["sop_instance_uid"]: f for f in node.queries.get_study(two)["result"]["films"]}
    assert len(detail["films"]) == 2
    for f in detail["films"]:
        assert f["decision"] == result[f["sop_instance_uid"]]["decision"]
        assert f["score"] == pytest.approx(result[f["sop_instance_uid"]]["score"])
        assert f["threshold"] is not None and f["heatmap_available"] and f["image_url"]
    assert {f["decision"] for f in detail["films"]} == {"suspicious", "likely_normal"}
    assert detail["decision"] == "suspicious"
    assert len([s for s in detail["result_summary"] if s.startswith("Image ")]) == 2

    canine = next(u for u, d in node.decisions.items() if d == "not_assessable")
    dog = client.get(f"/api/studies/{canine}").json()
    assert dog["films"][0]["reason"] == "non_human" and "not human" in dog["films"][0]["reason_text"]
    assert dog["score"] is None and "non_human" in dog["reason"]
    assert client.get("/api/studies/1.2.3.4.5").status_code == 404


def test_worklist_rows_say_why_a_study_is_not_assessable(node, client):
    """The not-assessable reason is on the worklist row (API and page), in codes and plain
    words; assessed studies carry none."""
    canine = next(u for u, d in node.decisions.items() if d == "not_assessable")
    rows = {r["study_instance_uid"]: r for r in client.get("/api/studies").json()["studies"]}
    assert rows[canine]["reason"] == "non_human"
    assert rows[canine]["reason_text"] == "patient is not human"
    assert all(r["reason"] is None and r["reason_text"] is None for u, r in rows.items() if u != canine)
    html = client.get("/").text
    row = html[html.index(f'data-uid="{canine}"'):]
    assert '<span class="reason meta">patient is not human</span>' in row[:row.index("</tr>")]
    assert html.count('class="reason meta"') == 1
    # issue 24 site re-run 2: the study page said "Why not assessable: lateral_view", the code;
    # it gives the same words as the worklist (the code kept as the tooltip)
    page = client.get(f"/studies/{canine}").text
    assert '<dd id="study-reason" title="non_human">patient is not human</dd>' in page


def test_api_and_pages_expose_the_nodule_mass_flag(node, client):
    """Each worklist row carries the study's nodule/mass flag and score as the worker stored
    them (null for a study no film of which was scored); the study API each film's; the
    worklist page badges the flagged studies. The flag never moves a study in the order."""
    rows = client.get("/api/studies").json()["studies"]
    for r in rows:
        stored = node.queries.get_study(r["study_instance_uid"])
        assert r["nodule_flag"] == stored["nodule_flag"] == stored["result"]["nodule_flag"]
        assert r["nodule_score"] == stored["nodule_score"] == stored["result"]["nodule_score"]
        if r["decision"] == "not_assessable":
            assert r["nodule_flag"] is None and r["nodule_score"] is None
        else:
            assert isinstance(r["nodule_flag"], bool) and 0.0 <= r["nodule_score"] <= 1.0
    flagged = [r for r in rows if r["nodule_flag"]]
    assert flagged and any(r["decision"] == "likely_normal" for r in flagged)  # an added finding
    two = next(u for u in node.decisions if node.queries.get_study(u)["n_instances"] == 2)
    detail = client.get(f"/api/studies/{two}").json()
    result = {f["sop_instance_uid"]: f for f in node.queries.get_study(two)["result"]["films"]}
    for f in detail["films"]:
        stored = result[f["sop_instance_uid"]]
        assert (f["nodule_score"], f["nodule_threshold"], f["nodule_flag"]) == (
            stored["nodule_score"], stored["nodule_threshold"], stored["nodule_flag"])
        assert f["nodule_threshold"] == 0.5 and f["nodule_flag"] is (f["nodule_score"] >= 0.5)
    assert detail["nodule_flag"] is any(f["nodule_flag"] for f in detail["films"])
    said = [s for s in detail["result_summary"] if s.startswith("Nodule/mass flag: ")]
    assert said and ("not flagged" not in said[0]) is detail["nodule_flag"]
    html = client.get("/").text
    assert html.count('<span class="badge nodule"') == len(flagged)
    uid = flagged[0]["study_instance_uid"]
    assert 'id="study-nodule"' in client.get(f"/studies/{uid}").text


def test_openapi_documents_the_api(client):
    spec = client.get("/openapi.json").json()
    assert {"/api/studies", "/api/studies/{study_uid}", "/metrics"} <= set(spec["paths"])
    ok = spec["paths"]["/api/studies/{study_uid}"]["get"]["responses"]["200"]
    assert ok["content"]["application/json"]["schema"]["$ref"].endswith("/StudyDetailOut")
    params = {p["name"] for p in spec["paths"]["/api/studies"]["get"]["parameters"]}
    assert params == {"decision", "date_from", "date_to", "limit"}
    assert "/studies/{study_uid}" not in spec["paths"]  # HTML pages are not API


# ----------------------------------------------------------------------------- images
def _png(client, url) -> Image.Image:
    r = client.get(url)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    return Image.open(io.BytesIO(r.content))


def test_heatmaps_are_persisted_by_the_worker_and_rendered(node, client):
    suspicious = [u for u, d in node.decisions.items() if d == "suspicious"]
    for uid in suspicious:
        for f in node.queries.get_study(uid)["result"]["films"]:
            assert heatmap_path(node.dirs.root, uid, f["sop_instance_uid"]).is_file()
    uid = suspicious[0]
    detail = client.get(f"/api/studies/{uid}").json()
    film = _png(client, detail["films"][0]["image_url"])
    heat = _png(client, detail["films"][0]["heatmap_url"])
    thumb = _png(client, detail["thumbnail_url"])
    assert film.mode == "L" and heat.mode == "RGBA" and heat.size == film.size
    assert np.asarray(heat)[..., 3].max() > 0                     # some of the film is coloured
    assert max(thumb.size) <= 160
    rgb = np.asarray(thumb.convert("RGB")).astype(int)
    assert np.abs(rgb[..., 0] - rgb[..., 2]).max() > 30          # heat colour over the grey film
    assert client.get(f"/studies/{uid}/films/1.2.3/film.png").status_code == 404


def test_only_a_validated_model_heatmaps_are_kept_for_the_page(tmp_path):
    """The worker's heatmaps stage keeps nothing for a model whose heatmap failed validation
    (the Triager drops such heatmaps too): the page then has no heatmap to show."""
    from types import SimpleNamespace

    from cxr_triage.contract.model_file import ModelMetadata
    from cxr_triage.contract.result import Decision, FilmResult, StudyResult
    from cxr_triage.dicom_node.store.spool import StateDirs
    from cxr_triage.dicom_node.worker.stages import StudyContext, StudyJob, keep_heatmaps

    film = FilmResult(Decision.SUSPICIOUS, sop_instance_uid="1.2.3.1", score=0.9,
                      heatmap=np.full((7, 7), 0.8, np.float32))
    for validated in (False, True):
        dirs = StateDirs(tmp_path / str(validated)).create()
        meta = ModelMetadata(name="m", version="1", heatmap_validated=validated)
        ctx = StudyContext(None, SimpleNamespace(meta=meta), dirs, None)  # type: ignore[arg-type]
        keep_heatmaps(ctx, StudyJob("1.2.3", [], result=StudyResult("1.2.3", Decision.SUSPICIOUS, 0.9, [film])))
        assert heatmap_path(dirs.root, "1.2.3", "1.2.3.1").is_file() is validated


# -------------------------------------------------------------------------- HTML pages
def test_worklist_page_shows_rows_in_api_order_and_refreshes(node, client):
    html = client.get("/").text
    uids = re.findall(r'<tr class="row [^"]*" data-uid="([0-9.]+)"', html)
    api = [r["study_instance_uid"] for r in client.get("/api/studies").json()["studies"]]
    assert uids == api
    assert '<meta http-equiv="refresh" content="30">' in html
    only = client.get("/", params={"decision": "suspicious"}).text
    assert set(re.findall(r'data-decision="(\w+)"', only)) == {"suspicious"}
    page = client.get(f"/studies/{node.failing_study}").text
    assert 'id="heatmap-toggle"' in page and "DOWNPACS@" in page and "calls this study suspicious" in page


def test_token_login_guards_pages_api_and_metrics(node):
    app = create_app(node.queries, node.cfg, settings=_settings(node, host="0.0.0.0", token="s3cret-token"))
    c = TestClient(app, follow_redirects=False)
    assert c.get("/api/studies").status_code == 401
    assert c.get("/metrics").status_code == 401
    assert c.get("/api/studies", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert c.get("/api/studies", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
    r = c.get("/", headers={"Accept": "text/html"})
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    r = c.post("/login", data={"token": "nope", "next": "/"})
    assert r.status_code == 303 and "failed=1" in r.headers["location"]
    r = c.post("/login", data={"token": "s3cret-token", "next": "//evil.example/"})
    assert r.status_code == 303 and r.headers["location"] == "/"
    assert c.get("/").status_code == 200 and c.get("/metrics").status_code == 200
    c.get("/logout")
    assert c.get("/api/studies").status_code == 401


def test_exposed_without_token_is_refused(node):
    from cxr_triage.dicom_node.web.app import WebConfigError, start_web

    with pytest.raises(WebConfigError, match="token"):
        create_app(node.queries, node.cfg, settings=_settings(node, host="0.0.0.0"))
    cfg = node.cfg.replace(web={"host": "10.1.2.3", "port": 0})
    with pytest.raises(WebConfigError):
        start_web(cfg, node.queries)
    assert start_web(node.cfg.replace(web={"enabled": False}), node.queries) is None


def test_start_web_serves_on_a_real_socket_and_stops(node):
    import httpx

    from cxr_triage.dicom_node.web.app import start_web

    server = start_web(node.cfg.replace(web={"port": 0}), node.queries)
    try:
        assert server.url.startswith("http://127.0.0.1:")
        r = httpx.get(server.url + "/api/studies", timeout=10)
        assert r.status_code == 200 and r.json()["count"] == len(node.decisions)
    finally:
        server.stop()
    time.sleep(0.1)
    with pytest.raises(httpx.HTTPError):
        httpx.get(server.url + "/healthz", timeout=2)


class _OneStudy:
    """A worklist source holding one study scored by a model whose nodule/mass flag is not
    shown (issue 22): nodule/mass score, no flag, and the point in words."""

    WORDS = ("score only, no flag: at its operating point normals_0.15 (15% of validation normals at or above "
             "it) it caught 42% of validation Nodule/Mass films, below the 60% a flag needs")

    def __init__(self, now: float):
        from cxr_triage.contract.study import FilmRecord

        film = Outcome(decision=Decision.SUSPICIOUS, score=0.8, threshold=0.31, operating_point="sens_0.98",
                       nodule_score=0.0815, nodule_threshold=0.0874, nodule_point=self.WORDS)
        study = Outcome(decision=Decision.SUSPICIOUS, score=0.8, threshold=0.31, operating_point="sens_0.98",
                        nodule_score=0.0815, nodule_point=self.WORDS)
        self.record = StudyRecord(study_uid="1.2.3", state="triaged", received_at=now - 60.0,
                                  result=ResultPart(outcome=study), films=(FilmRecord(sop_instance_uid="1.2.3.4",
                                                                                      outcome=film),))

    def list_studies(self, since=None, until=None):
        return [self.record]

    def get_study(self, uid):
        return self.record if uid == self.record.study_uid else None

    def stats(self):
        raise NotImplementedError


def test_a_nodule_score_without_flag_is_shown_with_the_reason():
    """The worklist row shows the score marked "(no flag)", never a badge; the study API and
    page give the score per film and the point in words, which says why no flag is given."""
    source = _OneStudy(time.time())
    client = TestClient(create_app(source, settings=WebSettings(max_wait_s=0.0)))
    row = client.get("/api/studies").json()["studies"][0]
    assert (row["nodule_flag"], row["nodule_score"]) == (None, 0.0815)
    html = client.get("/").text
    assert "0.082 (no flag)" in html and '<span class="badge nodule"' not in html
    detail = client.get("/api/studies/1.2.3").json()
    assert detail["nodule_point"] == _OneStudy.WORDS and detail["films"][0]["nodule_point"] == _OneStudy.WORDS
    page = client.get("/studies/1.2.3").text
    assert 'id="study-nodule-point"' in page and "below the 60% a flag needs" in page
    assert "Nodule/mass score 0.082 (score only, no flag)" in page and 'id="study-nodule"' not in page
