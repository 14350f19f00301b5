"""Patient-level split and validation calibration (pure numpy/sklearn, fast)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from cxr_triage.contract.operating_points import threshold_for_sensitivity
from cxr_triage.evaluation.metrics import expected_calibration_error
from cxr_triage.training import calibrate
from cxr_triage.training.manifest import Entry
from cxr_triage.training.split import assign_splits, check_no_leakage


def _entries(n_patients: int = 300, seed: int = 1) -> list[Entry]:
    rng = np.random.default_rng(seed)
    out = []
    for p in range(n_patients):
        label = int(rng.random() < 0.3)
        source = "a" if p % 3 else "b"
        for f in range(int(rng.integers(1, 4))):
            out.append(Entry(file=f"{p}_{f}.png", label=label, patient_id=f"p{p}", source=source))
    return out


def test_split_is_patient_level_stratified_and_deterministic() -> None:
    es = assign_splits(_entries(), 0.2, 0.2, seed=3)
    check_no_leakage(es)
    by_split = Counter(e.split for e in es)
    assert set(by_split) == {"train", "val", "test"}
    for split in ("val", "test"):
        share = by_split[split] / len(es)
        assert 0.12 < share < 0.28
        pos = np.mean([e.label for e in es if e.split == split])
        assert abs(pos - np.mean([e.label for e in es])) < 0.08
    again = assign_splits(_entries(), 0.2, 0.2, seed=3)
    assert [e.split for e in again] == [e.split for e in es]


def test_split_keeps_given_splits_and_catches_leakage() -> None:
    es = _entries(50)
    es[0].split = "excluded_paediatric"
    assign_splits(es, seed=0)
    assert es[0].split == "excluded_paediatric"
    bad = [Entry("a.png", 1, "p1", split="train"), Entry("b.png", 1, "p1", split="test")]
    with pytest.raises(ValueError, match="p1"):
        check_no_leakage(bad)


def test_temperature_recovers_known_scale() -> None:
    rng = np.random.default_rng(0)
    true_logit = rng.normal(0, 2, 20000)
    y = (rng.random(true_logit.size) < calibrate.expit(true_logit)).astype(int)
    t = calibrate.fit_temperature(true_logit * 3.0, y)  # over-confident by 3x
    assert t == pytest.approx(3.0, rel=0.08)
    s = calibrate.calibrated(true_logit * 3.0, t)
    assert expected_calibration_error(y, s) < expected_calibration_error(
        y, calibrate.calibrated(true_logit * 3.0, 1.0))


@pytest.mark.parametrize("target", calibrate.TARGET_SENSITIVITIES)
def test_threshold_meets_target_sensitivity_on_its_data(target: float) -> None:
    rng = np.random.default_rng(1)
    y = np.r_[np.ones(137, int), np.zeros(70, int)]
    s = np.r_[rng.beta(5, 2, 137), rng.beta(2, 5, 70)].astype(np.float32)
    t = calibrate.stored_threshold(threshold_for_sensitivity(y, s, target))
    r = calibrate.rates(s, y, t)
    assert r["sensitivity"] >= target
    # the highest such threshold: one step up would miss the target
    higher = np.min(s[(y == 1) & (s > t)]) if np.any((y == 1) & (s > t)) else None
    if higher is not None:
        assert calibrate.rates(s, y, float(np.nextafter(np.float32(higher), np.float32(2))))["sensitivity"] < target
    ops = calibrate.operating_points(s, y)
    assert ops["sens_0.95"] >= ops["sens_0.98"] >= ops["sens_0.99"]


def test_temperature_and_shift_fix_a_prior_shift() -> None:
    rng = np.random.default_rng(2)
    true_logit = rng.normal(0.7, 2, 20000)
    y = (rng.random(true_logit.size) < calibrate.expit(true_logit)).astype(int)
    t, shift = calibrate.fit_temperature_and_shift(2.0 * (true_logit - 0.7), y)  # scaled and centred
    assert t == pytest.approx(2.0, rel=0.1) and shift / t == pytest.approx(0.7, abs=0.1)


def test_operating_points_that_coincide_are_said_so(capsys: pytest.CaptureFixture) -> None:
    """Issue 24 site re-run 2: a fine-tuned model got one threshold for sens_0.95/0.98/0.99 on
    12 abnormal validation films and nothing said why; calibration warns, naming the count."""
    from types import SimpleNamespace

    from cxr_triage.training.val_calibration import calibration

    rng = np.random.default_rng(9)
    y = np.array([1] * 12 + [0] * 20)
    logits = np.where(y == 1, rng.normal(1.0, 1.0, y.size), rng.normal(-1.0, 1.0, y.size))
    entries = [Entry(file=f"f{i}.png", label=int(v), patient_id=f"p{i}", source="site") for i, v in enumerate(y)]
    out = calibration(SimpleNamespace(), entries, logits, np.ones(y.size, bool), 3)
    assert len(set(out["thresholds"].values())) == 1                  # the math is unchanged: ranks 12, 12, 12
    err = capsys.readouterr().err
    assert "WARNING: sens_0.95, sens_0.98, sens_0.99 share threshold" in err
    assert "ranked 12, 12, 12 of 12" in err and "with 12 abnormal validation films" in err
    assert calibrate.coinciding_points({"sens_0.95": 0.3, "sens_0.98": 0.2, "sens_0.99": 0.1}, 200) is None
