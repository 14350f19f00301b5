"""Live drift at run time: does today's stream still look like the population the threshold
was chosen on? (the ``/metrics`` drift gauges of the node)

A new X-ray unit, a changed exposure protocol or a different referral population moves the score
distribution before anyone notices missed films. Each day is compared with the commissioning
baseline (stored in the site threshold file, or a separate baseline file made from a shadow-mode
period): population stability index (PSI) over baseline-quantile bins and a two-sample
Kolmogorov–Smirnov test on the scores (scipy), plus the shares per decision and the share not
assessable. Past a configured bound (``[monitoring]``) a warning is logged and the gauges that
``/metrics`` exposes say so.

This is the run-time half; making baselines and multi-day reports (offline) is
``cxr_triage.evaluation.drift``, which imports what it shares from here. Nothing here imports
evaluation or training.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from cxr_triage.config import Config, resolve_path

log = logging.getLogger(__name__)

DECISIONS = ("suspicious", "likely_normal", "not_assessable")


@dataclass(frozen=True)
class DriftBounds:
    """When a day counts as drifted; defaults documented in ``[monitoring]``.

    Every check pairs a size (worth acting on) with a test (not sampling noise): PSI is noisy
    on a few dozen films (about (bins - 1) * (1/n + 1/m) under no drift), and on a busy day
    a test alone flags shifts too small to matter."""

    psi_max: float = 0.25                 # >0.25: "major shift" by the usual PSI reading ...
    alpha: float = 0.01                   # ... and KS / Fisher exact p-value below this
    decision_share_delta: float = 0.15    # absolute change in the share suspicious / likely normal
    not_assessable_delta: float = 0.10    # absolute rise in the share not assessable
    min_films: int = 50                   # fewer films: report, never flag
    psi_bins: int = 10

    @classmethod
    def from_config(cls, cfg: Config) -> "DriftBounds":
        m = cfg.monitoring
        return cls(psi_max=m.psi_max, alpha=m.alpha, decision_share_delta=m.decision_share_delta,
                   not_assessable_delta=m.not_assessable_delta, min_films=m.min_films,
                   psi_bins=m.psi_bins)


def population_stability_index(expected: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray,
                               bins: int = 10,
                               pseudo_count: float = 0.5) -> float:
    """PSI = sum((a - e) * ln(a / e)) over bins cut at the baseline's quantiles.

    Each bin's count gets ``pseudo_count`` (Jeffreys smoothing): an empty bin on a small day
    then weighs what its counts support (a fixed floor such as 1e-4 makes one empty bin of 10%
    alone worth ~0.7); ``pseudo_count=0`` gives the textbook formula (an empty bin: infinite)."""
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if not len(e) or not len(a):
        return float("nan")
    edges = np.unique(np.quantile(e, np.linspace(0, 1, bins + 1)[1:-1]))
    k = len(edges) + 1
    e_cnt = np.bincount(np.searchsorted(edges, e, side="right"), minlength=k) + pseudo_count
    a_cnt = np.bincount(np.searchsorted(edges, a, side="right"), minlength=k) + pseudo_count
    e_frac, a_frac = e_cnt / e_cnt.sum(), a_cnt / a_cnt.sum()
    with np.errstate(divide="ignore"):
        return float(np.sum((a_frac - e_frac) * np.log(a_frac / e_frac)))


def load_baseline(cfg: Config) -> dict[str, Any] | None:
    """``[monitoring] baseline_file`` if set, else the site threshold file's baseline, else None."""
    if cfg.monitoring.baseline_file:
        loaded: dict[str, Any] = json.loads(resolve_path(cfg, cfg.monitoring.baseline_file).read_text())
        return loaded
    if cfg.inference.site_threshold_file:
        from cxr_triage.inference.site_threshold import load_site_threshold

        base = load_site_threshold(resolve_path(cfg, cfg.inference.site_threshold_file)).baseline
        return base or None
    return None


@dataclass
class DriftReport:
    """One period (usually a day) against the baseline."""

    period: str
    n_films: int
    n_scored: int
    psi: float | None
    ks_statistic: float | None
    ks_pvalue: float | None
    decision_shares: dict[str, float]
    baseline_decision_shares: dict[str, float]
    reasons: list[str] = field(default_factory=list)
    enough_data: bool = True

    @property
    def drifted(self) -> bool:
        return bool(self.reasons)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["drifted"] = self.drifted
        return d

    def gauges(self) -> dict[str, float]:
        """Flat numbers for Prometheus gauges (NaN when not measurable)."""
        nan = float("nan")
        out = {
            "drift_alert": 1.0 if self.drifted else 0.0,
            "drift_psi": nan if self.psi is None else self.psi,
            "drift_ks_statistic": nan if self.ks_statistic is None else self.ks_statistic,
            "drift_ks_pvalue": nan if self.ks_pvalue is None else self.ks_pvalue,
            "drift_films": float(self.n_films),
        }
        for d in DECISIONS:
            out[f"drift_share_{d}"] = self.decision_shares.get(d, nan)
            out[f"drift_baseline_share_{d}"] = self.baseline_decision_shares.get(d, nan)
        return out


def _share_test(k: int, n: int, k_ref: int, n_ref: int) -> float:
    """Fisher exact p-value: is a share today different from the baseline's?"""
    from scipy.stats import fisher_exact

    if n == 0 or n_ref == 0:
        return 1.0
    return float(fisher_exact([[k, n - k], [k_ref, n_ref - k_ref]]).pvalue)


def compare_to_baseline(baseline: Mapping[str, Any], scores: Sequence[float | None],
                        decisions: Sequence[str], bounds: DriftBounds = DriftBounds(),
                        period: str = "") -> DriftReport:
    """Compare one period's films (score None when not assessable) with the baseline.

    Flags: score PSI > psi_max with KS p < alpha; a decision share moved by more than its
    bound with Fisher exact p < alpha. Nothing is flagged below ``min_films`` films."""
    from scipy.stats import ks_2samp

    dec = [str(getattr(d, "value", d)) for d in decisions]
    live = np.array([s for s in scores if s is not None], dtype=np.float64)
    ref = np.asarray(baseline.get("scores", []), dtype=np.float64)
    n = len(dec)
    n_ref = int(baseline.get("n_films", len(ref)))
    shares = {d: (dec.count(d) / n if n else 0.0) for d in DECISIONS}
    base_shares = {d: float(baseline.get("decision_shares", {}).get(d, 0.0)) for d in DECISIONS}
    psi = ks = p = None
    if len(live) and len(ref):
        psi = population_stability_index(ref, live, bounds.psi_bins)
        res = ks_2samp(ref, live)
        ks, p = float(res.statistic), float(res.pvalue)
    enough = n >= bounds.min_films
    reasons: list[str] = []
    if enough and psi is not None and len(live) >= bounds.min_films:
        if psi > bounds.psi_max and p is not None and p < bounds.alpha:
            reasons.append(f"score distribution shifted: PSI {psi:.3f} > {bounds.psi_max:g}, KS p={p:.2g}")
    if enough:
        checks = [("not_assessable", bounds.not_assessable_delta, True),
                  ("suspicious", bounds.decision_share_delta, False),
                  ("likely_normal", bounds.decision_share_delta, False)]
        for d, bound, rise_only in checks:
            delta = shares[d] - base_shares[d]
            big = delta > bound if rise_only else abs(delta) > bound
            if big:
                pv = _share_test(dec.count(d), n, round(base_shares[d] * n_ref), n_ref)
                if pv < bounds.alpha:
                    reasons.append(f"{d} share {shares[d]:.1%} vs baseline {base_shares[d]:.1%} "
                                   f"(change {delta:+.1%} > {bound:.0%}, Fisher p={pv:.2g})")
    return DriftReport(period=period, n_films=n, n_scored=len(live),
                       psi=psi, ks_statistic=ks, ks_pvalue=p, decision_shares=shares,
                       baseline_decision_shares=base_shares, reasons=reasons, enough_data=enough)


def log_if_drifted(report: DriftReport) -> bool:
    """One WARNING line per drifted period (numbers only, no PHI); returns report.drifted."""
    if report.drifted:
        log.warning("score drift against the commissioning baseline: " + "; ".join(report.reasons),
                    extra={"period": report.period, "n_films": report.n_films,
                           "psi": report.psi, "ks_pvalue": report.ks_pvalue})
    return report.drifted


# ---------------------------------------------------------------- the node's results

@dataclass
class LiveResult:
    """One delivered result: a study (sop_instance_uid None) or one of its films."""

    study_instance_uid: str
    decision: str                          # Decision value
    score: float | None
    sop_instance_uid: str | None = None
    reason: str | None = None
    received_at: float | None = None       # Unix seconds, UTC
    file: str = ""                         # the received file (node spool), when known
    operating_point: str | None = None
    model_version: str | None = None


def live_from_store(store: Any, since: float | None = None, until: float | None = None,
                    limit: int = 1_000_000) -> list[LiveResult]:
    """Study and film results of triaged studies in the node's job store
    (``cxr_triage.dicom_node.store.queries.StudyQueries``: ``list_studies`` / ``get_study``)."""
    out: list[LiveResult] = []
    for summary in store.list_studies(state="triaged", since=since, until=until, limit=limit):
        detail = store.get_study(summary["study_uid"]) or {}
        result = detail.get("result") or {}
        received = summary.get("first_received_at")
        paths = {i["sop_instance_uid"]: i.get("path", "") for i in detail.get("instances", [])}
        films = result.get("films", [])
        scored: dict[str, Any] = next((f for f in films if f.get("operating_point")), {})
        out.append(LiveResult(summary["study_uid"], summary["decision"], summary.get("score"),
                              received_at=received, operating_point=scored.get("operating_point"),
                              model_version=scored.get("model_version")))
        for f in films:
            uid = f.get("sop_instance_uid")
            out.append(LiveResult(summary["study_uid"], f["decision"], f.get("score"), uid, f.get("reason"),
                                  received_at=received, file=paths.get(uid, "") or f.get("source", ""),
                                  operating_point=f.get("operating_point"),
                                  model_version=f.get("model_version")))
    return out


def utc_day_bounds(day: str) -> tuple[float, float]:
    """'2026-11-25' -> (start, end) Unix seconds of that UTC day."""
    d = _dt.date.fromisoformat(day)
    start = _dt.datetime(d.year, d.month, d.day, tzinfo=_dt.timezone.utc).timestamp()
    return start, start + 86400.0


def film_rows_from_store(store: Any, since: float | None = None,
                         until: float | None = None) -> list[tuple[_dt.datetime, str, float | None]]:
    """(received time, decision, score) per film of the triaged studies in the node's job store."""
    rows = []
    for r in live_from_store(store, since, until):
        if r.sop_instance_uid is None or r.received_at is None:
            continue
        when = _dt.datetime.fromtimestamp(r.received_at, _dt.timezone.utc)
        rows.append((when, r.decision, None if r.decision == "not_assessable" else r.score))
    return rows


def drift_report_for_day(cfg: Config, store: Any, day: str | None = None) -> DriftReport | None:
    """The report of one UTC day (default today) from the node's store against the configured
    baseline; None when no baseline is configured."""
    baseline = load_baseline(cfg)
    if not baseline:
        return None
    day = day or _dt.datetime.now(_dt.timezone.utc).date().isoformat()
    rows = film_rows_from_store(store, *utc_day_bounds(day))
    return compare_to_baseline(baseline, [r[2] for r in rows], [r[1] for r in rows],
                               DriftBounds.from_config(cfg), day)


class DriftCollector:
    """Prometheus collector for ``/metrics``: today's drift gauges (``cxr_triage_drift_*``).

    Register it with the node's registry, e.g.
    ``build_registry(source, model_info, extra=[DriftCollector(cfg, store)])``. Recomputed at
    most every ``ttl_s`` seconds; one WARNING log line per day when the day turns drifted."""

    def __init__(self, cfg: Config, store: Any, ttl_s: float = 60.0, clock: Any = None):
        import time

        self._cfg, self._store, self._ttl = cfg, store, ttl_s
        self._clock = clock or time.time
        self._cached: tuple[float, DriftReport | None] | None = None
        self._warned: set[str] = set()

    def report(self) -> DriftReport | None:
        now = self._clock()
        if self._cached is None or now - self._cached[0] > self._ttl:
            day = _dt.datetime.fromtimestamp(now, _dt.timezone.utc).date().isoformat()
            rep = drift_report_for_day(self._cfg, self._store, day)
            if rep is not None and rep.drifted and rep.period not in self._warned:
                self._warned.add(rep.period)
                log_if_drifted(rep)
            self._cached = (now, rep)
        return self._cached[1]

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import GaugeMetricFamily

        try:
            rep = self.report()
        except Exception:  # a scrape must answer even when the baseline or store is unreadable
            log.exception("drift: computing today's report failed")
            return
        if rep is None:
            return
        helps = {
            "drift_alert": "1 when today's stream drifted from the commissioning baseline ([monitoring])",
            "drift_psi": "Population stability index of today's film scores vs the baseline",
            "drift_ks_statistic": "Two-sample KS statistic of today's film scores vs the baseline",
            "drift_ks_pvalue": "KS test p-value of today's film scores vs the baseline",
            "drift_films": "Films triaged today (UTC) in the drift comparison",
        }
        g = rep.gauges()
        for name, text in helps.items():
            yield GaugeMetricFamily(f"cxr_triage_{name}", text, value=g[name])
        share = GaugeMetricFamily("cxr_triage_drift_decision_share",
                                  "Share of today's films per decision, and the baseline's",
                                  labels=["decision", "period"])
        for d in DECISIONS:
            share.add_metric([d, "today"], g[f"drift_share_{d}"])
            share.add_metric([d, "baseline"], g[f"drift_baseline_share_{d}"])
        yield share
