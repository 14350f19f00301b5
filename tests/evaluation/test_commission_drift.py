"""Drift on real films: an exposure change and a different population are flagged, while an
undisturbed stream (a different random sample of the same population) is not."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from support.commission_support import as_dicom, film_pool, gamma_copy, record_results

from cxr_triage.config import load_config
from cxr_triage.evaluation.drift import (
    DriftBounds,
    DriftCollector,
    compare_to_baseline,
    daily_reports,
    drift_report_for_day,
    film_rows_from_store,
    log_if_drifted,
    make_baseline,
    population_stability_index,
)

N_BASE, N_STREAM = 250, 120
# An exposure/processing change beyond what the model is trained to shrug off: the recipe's
# pipeline randomisation varies gamma in 0.7-1.5 (training/augment.py), and the bundled model's
# scores barely move at gamma 0.5 (PSI 0.249 on this stream); at 0.3 they do.
GAMMA = 0.3
BOUNDS = DriftBounds.from_config(load_config(None, environ={}))  # the documented defaults


@pytest.fixture(scope="module")
def streams(shared_data: Path, model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Disjoint random samples of the adult NIH pool, scored by the worker's pipeline:
    baseline, undisturbed, exposure-changed (gamma 0.3: much brighter mid-tones), normals only."""
    from cxr_triage.inference.pipeline import Triager

    pool = film_pool(shared_data)
    rng = np.random.default_rng(20261125)
    order = _stratified_order(pool, rng)
    base, same, exposed = (order[:N_BASE], order[N_BASE:N_BASE + N_STREAM],
                           order[N_BASE + N_STREAM:N_BASE + 2 * N_STREAM])
    normals = [f for f in order[N_BASE + 2 * N_STREAM:] if f.label == 0][:N_STREAM]
    assert len(normals) >= 100
    gamma_dir = tmp_path_factory.mktemp("gamma")
    cfg = load_config(None, environ={}).replace(inference={"model_path": str(model_path), "threads": 1})
    triager = Triager(cfg)

    def run(paths: list[Path]) -> list:
        return triager.triage_paths(paths)

    # a paediatric ward starts sending: 40 children among the adults, as DICOM with their ages
    children = film_pool(shared_data, children=True)[:40]
    mixed = [*order[N_BASE + N_STREAM:N_BASE + N_STREAM + N_STREAM - len(children)], *children]
    out = {
        "baseline": run([f.path for f in base]),
        "undisturbed": run([f.path for f in same]),
        "exposure": run([gamma_copy(f.path, gamma_dir, GAMMA) for f in exposed]),
        "normals_only": run([f.path for f in normals]),
        "with_children": [triager.triage_dataset(as_dicom(f), str(f.path)) for f in mixed],
        "baseline_labels": [f.label for f in base],
        "model_path": model_path,
    }
    return out


def _stratified_order(pool: list, rng: np.random.Generator) -> list:
    """The pool in a random order in which every stretch keeps the pool's (source, label) mix:
    each group is shuffled and its k-th film placed at (k + u) / group size, u ~ U(0, 1). The
    baseline and each stream are then samples of one population with the same composition,
    so an undisturbed day differs from the baseline by sampling noise alone."""
    groups: dict[tuple[str, int], list] = {}
    for f in pool:
        groups.setdefault((getattr(f, "source", ""), f.label), []).append(f)
    keyed = []
    for films in groups.values():
        for k, i in enumerate(rng.permutation(len(films))):
            keyed.append(((k + rng.random()) / len(films), films[i]))
    return [f for _, f in sorted(keyed, key=lambda kf: kf[0])]


def _scores(results: list) -> tuple[list, list]:
    return ([r.score if r.decision.value != "not_assessable" else None for r in results],
            [r.decision.value for r in results])


def _report(streams: dict, name: str, n: int | None = None):
    baseline = make_baseline(*_scores(streams["baseline"]))
    scores, decisions = _scores(streams[name][:n] if n else streams[name])
    return compare_to_baseline(baseline, scores, decisions, BOUNDS, name)


def test_false_alarm_rate_on_random_splits_of_one_population(streams: dict) -> None:
    """The rule's specificity, not one lucky draw: 200 random baseline/day splits of the same
    scored films (no drift by construction; the undisturbed stream's films among them) are
    flagged at most 5% of the time. (One fixed undisturbed day is one of these draws: at a 5%
    false-alarm rate it is flagged now and then by design, so it is not asserted alone.)"""
    rep = _report(streams, "undisturbed")
    assert rep.n_films == N_STREAM and rep.enough_data
    pool = list(streams["baseline"]) + list(streams["undisturbed"])
    rng = np.random.default_rng(3)
    flagged = 0
    for _ in range(200):
        idx = rng.permutation(len(pool))
        base = [pool[i] for i in idx[:N_BASE]]
        day = [pool[i] for i in idx[N_BASE:]]
        rep = compare_to_baseline(make_baseline(*_scores(base)), *_scores(day), BOUNDS)
        flagged += rep.drifted
    assert flagged <= 10, f"{flagged} of 200 undisturbed days flagged"


def test_exposure_change_is_flagged_and_logged(streams: dict, caplog: pytest.LogCaptureFixture) -> None:
    rep = _report(streams, "exposure")
    assert rep.drifted, (rep.psi, rep.ks_pvalue, rep.reasons)
    # the scores moved (KS), and the rule says how: a shifted distribution (PSI) or shifted
    # decision shares (the bundled model calls more of the brightened films likely normal)
    assert rep.ks_pvalue < BOUNDS.alpha
    assert any(r.startswith(("score distribution shifted", "suspicious share", "likely_normal share"))
               for r in rep.reasons), rep.reasons
    with caplog.at_level(logging.WARNING, logger="cxr_triage.evaluation.drift"):
        assert log_if_drifted(rep)
    assert any("drift" in rec.getMessage() for rec in caplog.records)


def test_different_population_children_is_flagged(streams: dict) -> None:
    """Children among the adults: the share not assessable (paediatric) rises; any model."""
    rep = _report(streams, "with_children")
    assert rep.decision_shares["not_assessable"] == pytest.approx(40 / N_STREAM)
    assert rep.drifted
    assert any(r.startswith("not_assessable share") for r in rep.reasons)


def test_different_population_normals_only_is_flagged(streams: dict) -> None:
    """Normals only against the mixed population of the baseline. Only a model that tells
    normal from abnormal films can see this in its scores: skipped for one that cannot (the
    tiny test model scores mean brightness, AUROC about 0.5)."""
    from sklearn.metrics import roc_auc_score

    auc = roc_auc_score(streams["baseline_labels"], [r.score for r in streams["baseline"]])
    if auc < 0.7:
        pytest.skip(f"model AUROC {auc:.2f} on the baseline films: a population change cannot move its scores")
    rep = _report(streams, "normals_only")
    assert rep.drifted, (rep.psi, rep.ks_pvalue, rep.decision_shares)


def test_small_days_are_reported_but_never_flagged(streams: dict) -> None:
    rep = _report(streams, "exposure", n=BOUNDS.min_films - 1)
    assert not rep.enough_data and not rep.drifted
    assert rep.psi is not None  # still measured, for the dashboard


def test_psi_matches_a_hand_computed_case() -> None:
    expected = [0.1] * 50 + [0.9] * 50          # two bins, 50/50 at the baseline's median
    actual = [0.1] * 80 + [0.9] * 20
    hand = 0.3 * np.log(0.8 / 0.5) + (-0.3) * np.log(0.2 / 0.5)
    assert population_stability_index(expected, actual, bins=2, pseudo_count=0) == pytest.approx(hand)
    assert population_stability_index(expected, expected, bins=2) == pytest.approx(0.0)
    # with the default half-count smoothing: (80.5/101, 20.5/101) against (50.5/101, 50.5/101)
    a, e = np.array([80.5, 20.5]) / 101, np.array([50.5, 50.5]) / 101
    assert population_stability_index(expected, actual, bins=2) == pytest.approx(float(np.sum((a - e) * np.log(a / e))))


def test_daily_store_gauges_flag_only_the_drifted_day(streams: dict, tmp_path: Path) -> None:
    """Two days in a real node job store: day 1 undisturbed, day 2 exposure-changed; baseline
    from a site threshold file (the configured path), gauges through Prometheus."""
    import hashlib

    from support.commission_support import utc_noon

    from cxr_triage.dicom_node.store.jobs import JobStore
    from cxr_triage.dicom_node.store.queries import StudyQueries
    from cxr_triage.inference.site_threshold import SiteThreshold, write_site_threshold

    model = streams["model_path"]
    site = SiteThreshold(site="drift-test", threshold=0.5, target_sensitivity=0.98, confidence=0.95,
                         ci_method="clopper-pearson",
                         model_sha256=hashlib.sha256(model.read_bytes()).hexdigest(),
                         baseline=make_baseline(*_scores(streams["baseline"])))
    site_file = write_site_threshold(site, tmp_path / "site.json")
    cfg = load_config(None, environ={}).replace(
        inference={"model_path": str(model), "site_threshold_file": str(site_file)},
        node={"state_dir": str(tmp_path / "var")})
    store = JobStore(tmp_path / "var" / "queue.sqlite3")
    record_results(store, list(streams["undisturbed"]), "2026-11-20")
    record_results(store, list(streams["exposure"]), "2026-11-21")

    rows = film_rows_from_store(StudyQueries(store))
    assert len(rows) == 2 * N_STREAM
    by_day = {r.period: r for r in daily_reports(site.baseline, rows, BOUNDS, warn=False)}
    assert not by_day["2026-11-20"].drifted and by_day["2026-11-21"].drifted
    assert drift_report_for_day(cfg, StudyQueries(store), "2026-11-21").drifted

    registry = CollectorRegistry()
    registry.register(DriftCollector(cfg, StudyQueries(store), clock=lambda: utc_noon("2026-11-21")))
    text = generate_latest(registry).decode()
    assert "cxr_triage_drift_alert 1.0" in text
    assert f"cxr_triage_drift_films {float(N_STREAM)}" in text
    quiet = CollectorRegistry()
    quiet.register(DriftCollector(cfg, StudyQueries(store), clock=lambda: utc_noon("2026-11-20")))
    assert "cxr_triage_drift_alert 0.0" in generate_latest(quiet).decode()


def test_node_metrics_endpoint_shows_the_drift_gauges(streams: dict, tmp_path: Path) -> None:
    """The running node's /metrics carries today's drift gauges (baseline from [monitoring])."""
    import datetime as dt
    import urllib.request

    from support.node_peers import free_port

    from cxr_triage.dicom_node.service.node import Node
    from cxr_triage.evaluation.drift import write_baseline

    baseline = write_baseline(make_baseline(*_scores(streams["baseline"])), tmp_path / "baseline.json")
    web_port = free_port()
    cfg = load_config(None, environ={}).replace(
        inference={"model_path": str(streams["model_path"]), "threads": 1},
        node={"host": "127.0.0.1", "port": 0, "state_dir": str(tmp_path / "var")},
        web={"enabled": True, "host": "127.0.0.1", "port": web_port},
        monitoring={"baseline_file": str(baseline)})
    node = Node(cfg)
    # the day's results go into the store before the node's worker runs: a running worker
    # would race the helper for the studies it records (and try to triage their PNG spool files)
    today = dt.datetime.now(dt.timezone.utc).date().isoformat()
    record_results(node.store, list(streams["exposure"]), today)
    node.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/metrics", timeout=30) as r:
            text = r.read().decode()
    finally:
        node.stop(timeout_s=5)
    assert "cxr_triage_drift_alert 1.0" in text
    assert 'cxr_triage_drift_decision_share{decision="not_assessable",period="today"}' in text
