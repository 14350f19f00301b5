"""Threshold selection (point and lower-bound rules) and threshold provenance."""

from __future__ import annotations

import numpy as np
import pytest

from cxr_triage.contract.model_file import ModelMetadata
from cxr_triage.evaluation import metrics as M
from cxr_triage.evaluation import thresholds as T


def _data(n_pos: int, n_neg: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]
    s = np.clip(np.r_[rng.normal(0.65, 0.15, n_pos), rng.normal(0.35, 0.15, n_neg)], 0, 1)
    return y, s


def test_point_rule_is_highest_threshold_meeting_target() -> None:
    y, s = _data(200, 150)
    for target in (0.9, 0.95, 0.98, 0.99):
        c = T.select_operating_point(y, s, target)
        assert c.feasible and c.name == T.op_name(target)
        assert c.threshold == M.threshold_for_sensitivity(y, s, target)
        assert c.sensitivity >= target
        pos = s[y == 1]
        higher = pos[pos > c.threshold]
        if len(higher):   # any higher candidate threshold misses the target
            assert M.operating_point(y, s, higher.min()).sensitivity.value < target


@pytest.mark.parametrize("method", ["wilson", "exact"])
def test_lower_bound_rule(method: str) -> None:
    y, s = _data(600, 300, seed=1)
    c = T.select_operating_point(y, s, 0.95, rule="lower_bound", method=method)
    assert c.feasible
    tp = M.operating_point(y, s, c.threshold).tp
    assert c.tp == tp and M.lower_bound(tp, 600, method=method) >= 0.95
    assert c.sensitivity_low == pytest.approx(M.lower_bound(tp, 600, method=method))
    higher = s[y == 1][s[y == 1] > c.threshold]
    if len(higher):   # the next higher threshold breaks the rule
        tp_next = M.operating_point(y, s, higher.min()).tp
        assert M.lower_bound(tp_next, 600, method=method) < 0.95
    point = T.select_operating_point(y, s, 0.95)
    assert c.threshold <= point.threshold   # the lower-bound rule is never less conservative


def test_lower_bound_rule_infeasible_with_too_few_abnormal_films() -> None:
    y, s = _data(150, 100, seed=2)
    c = T.select_operating_point(y, s, 0.98, rule="lower_bound")
    assert not c.feasible and c.threshold is None
    assert c.min_abnormal_needed == 189          # n/(n+z^2) >= 0.98  <=>  n >= 188.2
    assert "189" in c.note
    assert T.min_abnormal_for_lower_bound(0.98, method="exact") == 183   # 0.025^(1/n) >= 0.98
    with pytest.raises(ValueError):
        T.choose_thresholds(y, s, [str(i) for i in range(len(y))], targets=[0.98], rule="lower_bound")


def test_choose_thresholds_remembers_films_and_round_trips(tmp_path) -> None:
    y, s = _data(100, 100, seed=3)
    keys = [f"sha256:{i:04d}" for i in range(len(y))]
    ts = T.choose_thresholds(y, s, keys, targets=(0.95, 0.98, 0.99), chosen_on="validation.csv")
    assert set(ts.thresholds) == {"sens_0.95", "sens_0.98", "sens_0.99"} and ts.default == "sens_0.98"
    assert ts.thresholds["sens_0.99"] <= ts.thresholds["sens_0.98"] <= ts.thresholds["sens_0.95"]
    assert ts.chosen_on_keys == sorted(keys)
    back = T.ThresholdSet.load(ts.save(tmp_path / "t.json"))
    assert back == ts
    (tmp_path / "bad.json").write_text('{"thresholds": {}}')
    with pytest.raises(ValueError):
        T.ThresholdSet.load(tmp_path / "bad.json")


def test_provenance_flags_thresholds_picked_on_reported_films() -> None:
    y, s = _data(100, 100, seed=4)
    keys = [f"k{i}" for i in range(200)]
    ts = T.choose_thresholds(y[:120], s[:120], keys[:120], chosen_on="first 120")
    same = T.provenance(ts, keys[100:])            # 20 of the reported films were used
    assert same["checked"] and same["picked_on_reported_films"] and same["overlap"] == 20
    assert "PICKED ON THE REPORTED FILMS" in same["warning"]
    other = T.provenance(ts, keys[120:])
    assert other["checked"] and not other["picked_on_reported_films"] and other["overlap"] == 0
    assert "warning" not in other


def test_model_thresholds_unknown_films_are_said_to_be_unchecked() -> None:
    meta = ModelMetadata(name="m", version="1", thresholds={"sens_0.98": 0.3, "sens_0.95": 0.4})
    ts = T.from_model_metadata(meta)
    assert ts.threshold() == ("sens_0.98", 0.3)
    prov = T.provenance(ts, ["a", "b"])
    assert prov["checked"] is False and not prov["picked_on_reported_films"] and "could not be checked" in prov["note"]
    known = T.from_model_metadata(meta, chosen_on="val.csv", chosen_on_keys=["b", "c"])
    assert T.provenance(known, ["a", "b"])["picked_on_reported_films"]
