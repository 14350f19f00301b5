"""/metrics parsed with prometheus_client's own parser, against the node's real job store."""

from __future__ import annotations

from collections import Counter

import pytest
from conftest import free_port
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from support.web_node import build_triaged_node

from cxr_triage.dicom_node.store.jobs import JobStore
from cxr_triage.dicom_node.store.queries import StudyQueries
from cxr_triage.dicom_node.web.app import WebSettings, create_app
from cxr_triage.dicom_node.web.metrics import histogram_buckets


@pytest.fixture(scope="module")
def node(tmp_path_factory, tiny_model, shared_data, sample_dicoms):
    return build_triaged_node(tmp_path_factory.mktemp("metricsnode"), tiny_model, shared_data,
                              sample_dicoms, down_port=free_port())


def scrape(app) -> dict[str, dict[tuple, float]]:
    """{sample name: {sorted label items: value}} from the text exposition format."""
    r = TestClient(app).get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_metrics_match_the_store(node):
    app = create_app(node.queries, node.cfg, settings=WebSettings(state_dir=node.dirs.root))
    m = scrape(app)
    assert m["cxr_triage_store_up"][()] == 1.0
    assert m["cxr_triage_instances_received_total"][()] == node.instances
    by_decision = Counter(node.decisions.values())
    for decision in ("suspicious", "likely_normal", "not_assessable"):
        assert m["cxr_triage_studies_triaged_total"][(("decision", decision),)] == by_decision[decision]
    # one latency observation per triaged study; cumulative buckets end at the count
    assert m["cxr_triage_study_latency_seconds_count"][()] == len(node.decisions)
    buckets = sorted(((float(dict(k)["le"]), v) for k, v in m["cxr_triage_study_latency_seconds_bucket"].items()))
    assert buckets[-1] == (float("inf"), len(node.decisions))
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)
    # the 3-hour-old study's latency lies beyond the 1-hour bucket
    assert dict(buckets)[3600.0] < len(node.decisions)
    # the delivery to the PACS that is down: one failed attempt, still owed
    failed = sum(1 for d in node.queries.get_study(node.failing_study)["deliveries"]
                 for a in d["attempt_log"] if not a["ok"])
    assert failed >= 1 and m["cxr_triage_delivery_failures_total"][()] == failed
    counts = node.queries.counts()
    # one delivery per result object (the SR and each summary image), each still owed
    owed = len(node.queries.get_study(node.failing_study)["objects"])
    assert m["cxr_triage_queue_depth"][()] == counts["deliveries"].get("pending", 0) == owed >= 1
    oldest = node.queries.oldest_pending()
    assert m["cxr_triage_oldest_pending_age_seconds"][()] == pytest.approx(oldest["age_s"], abs=5.0)
    assert m["cxr_triage_dead_letters"][()] == 0
    info = next(iter(m["cxr_triage_model_info"]))
    assert dict(info)["version"] == node.model_version and dict(info)["name"] == node.model_name


def test_each_node_has_its_own_registry(node, tmp_path):
    empty = StudyQueries(JobStore(tmp_path / "queue.sqlite3"))
    model = {"name": "other-model", "version": "9.9"}
    other = create_app(empty, None, settings=WebSettings(state_dir=tmp_path), model_info=model)
    full = create_app(node.queries, node.cfg, settings=WebSettings(state_dir=node.dirs.root))
    m_other, m_full = scrape(other), scrape(full)
    assert m_other["cxr_triage_instances_received_total"][()] == 0
    assert m_other["cxr_triage_oldest_pending_age_seconds"][()] == 0
    assert m_full["cxr_triage_instances_received_total"][()] == node.instances
    assert dict(next(iter(m_other["cxr_triage_model_info"])))["version"] == "9.9"


def test_a_broken_store_still_answers_the_scrape(node):
    class Broken:
        def list_studies(self, since=None, until=None):
            raise OSError("database is locked")

        get_study = list_studies

        def stats(self):
            raise OSError("database is locked")

    m = scrape(create_app(Broken(), None, settings=WebSettings(), model_info={"version": "1"}))
    assert m["cxr_triage_store_up"][()] == 0.0
    assert "cxr_triage_instances_received_total" not in m


def test_histogram_buckets_are_cumulative():
    buckets, total = histogram_buckets([0.2, 1.0, 7.0, 7.5, 5000.0], bounds=(1, 5, 10))
    assert buckets == [("1.0", 2.0), ("5.0", 2.0), ("10.0", 4.0), ("+Inf", 5.0)]
    assert total == pytest.approx(5015.7)
