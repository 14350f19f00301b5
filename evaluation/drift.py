"""Drift, offline: baselines from a reference period and day-by-day reports over a past period.

The run-time half (bounds, PSI / KS comparison, the ``/metrics`` collector, reading the node's
store) is :mod:`cxr_triage.dicom_node.monitoring.drift`; its names are re-exported here so offline
code and tests have one place to import drift from.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Mapping

from cxr_triage.dicom_node.monitoring.drift import (
    DECISIONS,
    DriftBounds,
    DriftCollector,
    DriftReport,
    compare_to_baseline,
    drift_report_for_day,
    film_rows_from_store,
    load_baseline,
    log,
    log_if_drifted,
    population_stability_index,
)

__all__ = ["DECISIONS", "DriftBounds", "DriftCollector", "DriftReport", "compare_to_baseline", "daily_reports",
           "drift_report_for_day", "film_rows_from_store", "load_baseline", "log", "log_if_drifted",
           "make_baseline", "population_stability_index", "write_baseline"]


def make_baseline(scores: Iterable[float | None], decisions: Iterable[str]) -> dict[str, Any]:
    """A drift baseline from a reference period (e.g. the first weeks in shadow mode)."""
    dec = [str(getattr(d, "value", d)) for d in decisions]
    sc = sorted(float(s) for s in scores if s is not None)
    n = len(dec)
    return {
        "n_films": n,
        "scores": [round(s, 6) for s in sc],
        "decision_shares": {d: (dec.count(d) / n if n else 0.0) for d in DECISIONS},
    }


def daily_reports(baseline: Mapping[str, Any],
                  results: Iterable[tuple[str | _dt.date | _dt.datetime, str, float | None]],
                  bounds: DriftBounds = DriftBounds(), warn: bool = True) -> list[DriftReport]:
    """Group (when, decision, score) by UTC day and compare each day; log a warning per drifted day."""
    by_day: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
    for when, decision, score in results:
        day = when.date().isoformat() if isinstance(when, _dt.datetime) else str(when)[:10]
        by_day[day][0].append(score)
        by_day[day][1].append(decision)
    reports = [compare_to_baseline(baseline, s, d, bounds, day) for day, (s, d) in sorted(by_day.items())]
    if warn:
        for r in reports:
            log_if_drifted(r)
    return reports


def write_baseline(baseline: Mapping[str, Any], path: str | Path) -> Path:
    p = Path(path)
    p.write_text(json.dumps(dict(baseline), indent=2, sort_keys=True) + "\n")
    return p
