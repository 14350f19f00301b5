"""Commissioning refuses a threshold that can only mislead (issue 24): the site's 195 abnormal
and 75 normal films meet the 0.98 / 95% Clopper-Pearson rule only by catching all 195, which
here puts the threshold below every film. The tool says what the rule demands, that the result
saves no work and what the site can do, writes nothing and exits 3; --accept-no-savings writes
it with a warning. The numbers are checked against scipy's beta quantile, not the code under test."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import beta

from cxr_triage.evaluation import commission_advice as advice
from cxr_triage.evaluation.commission import NoWorkSaved, commission
from cxr_triage.evaluation.sources import Film, Scored

CLI = [sys.executable, "-m", "cxr_triage.cli"]
N_ABNORMAL, N_NORMAL = 195, 75


def cp_low(k: int, n: int) -> float:
    return float(beta.ppf(0.025, k, n - k + 1))


def site_scores() -> tuple[list[int], list[float]]:
    """Abnormal films score 0.3-0.99 except one at 0.012; normals 0.05-0.6: catching all 195
    puts the threshold at 0.012, below every normal film."""
    rng = np.random.default_rng(24)
    abn = [0.012, *rng.uniform(0.3, 0.99, N_ABNORMAL - 1)]
    nor = list(rng.uniform(0.05, 0.6, N_NORMAL))
    return [1] * N_ABNORMAL + [0] * N_NORMAL, [float(x) for x in abn + nor]


def films_and_scores() -> tuple[list[Film], list[Scored]]:
    labels, scores = site_scores()
    films = [Film(file=f"f{i}.dcm", path=Path(f"/nonexistent/f{i}.dcm"), label=y, patient_id=f"p{i}",
                  key=f"name:f{i}") for i, y in enumerate(labels)]
    return films, [Scored(score=s) for s in scores]


def test_demands_for_195_abnormal_films() -> None:
    d = advice.demands(N_ABNORMAL, 0.98, 0.95, "exact")
    assert d.bound_none_missed == pytest.approx(cp_low(195, 195)) and d.bound_none_missed >= 0.98
    assert d.bound_one_missed == pytest.approx(cp_low(194, 195)) and d.bound_one_missed < 0.98
    assert d.misses_allowed == 0
    # one miss needs n with cp_low(n - 1, n) >= 0.98, and n - 1 films are not enough
    assert cp_low(d.needed_for_one_miss - 1, d.needed_for_one_miss) >= 0.98
    assert cp_low(d.needed_for_one_miss - 2, d.needed_for_one_miss - 1) < 0.98
    assert d.needed_for_none_missed == 183
    text = "\n".join(d.lines())
    assert "every one of the 195 abnormal films must be called suspicious" in text
    assert f"allowing one miss needs at least {d.needed_for_one_miss} abnormal films" in text


def test_threshold_below_every_film_is_refused_with_the_options() -> None:
    films, scored = films_and_scores()
    with pytest.raises(NoWorkSaved) as err:
        commission(films, scored, Path(__file__), "site", also_targets=())
    msg = str(err.value)
    assert "sets aside 0 of 75 normal films" in msg
    assert "more abnormal films" in msg and "another target: --target 0.95" in msg
    assert "shadow mode first" in msg and "--accept-no-savings" in msg
    site = commission(films, scored, Path(__file__), "site", also_targets=(), accept_no_savings=True)
    assert site.threshold == pytest.approx(0.012)
    assert site.evidence["saves_work"] is False and site.evidence["at_threshold"]["tn"] == 0


def test_a_set_aside_short_of_min_set_aside_is_worded_by_the_numbers() -> None:
    """Issue 24 site re-run 2: --min-set-aside 0.2 with 15% set aside said the node "would call
    (nearly) every study suspicious and save no work"; it says the numbers now."""
    films, scored = films_and_scores()
    scored[0] = Scored(score=0.5)        # the lowest abnormal film now scores among the normals
    with pytest.raises(NoWorkSaved) as err:
        commission(films, scored, Path(__file__), "site", also_targets=(), min_set_aside=0.8)
    msg = str(err.value)
    tn = int(msg.split("it sets aside ")[1].split(" of")[0])
    assert tn >= 0.05 * N_NORMAL and "(nearly) every study" not in msg
    assert (f"less than the 80% asked (--min-set-aside): the node would still call {N_NORMAL - tn} of "
            f"{N_NORMAL} normal studies suspicious") in msg
    assert f"--accept-no-savings writes this threshold anyway (it sets aside {tn} of {N_NORMAL} normal films)" in msg
    assert "(nearly) every study suspicious" in advice.no_savings_words(0, N_NORMAL)


def write_inputs(tmp: Path) -> tuple[Path, Path]:
    labels, scores = site_scores()
    manifest, scores_csv = tmp / "site.csv", tmp / "scores.csv"
    with manifest.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "label"])
        w.writerows([f"f{i}.dcm", "abnormal" if y else "normal"] for i, y in enumerate(labels))
    with scores_csv.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "score"])
        w.writerows([f"f{i}.dcm", f"{s:.6f}"] for i, s in enumerate(scores))
    return manifest, scores_csv


def test_cli_refuses_and_writes_nothing_unless_told(tmp_path: Path, tiny_model: Path) -> None:
    manifest, scores_csv = write_inputs(tmp_path)
    out = tmp_path / "site_threshold.json"
    base = [*CLI, "commission", "--manifest", str(manifest), "--scores", str(scores_csv), "--model",
            str(tiny_model), "--site", "st-elsewhere", "--also-targets", "", "--out", str(out)]
    proc = subprocess.run(base, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert not out.exists()
    assert "with 195 abnormal films, finding all 195 gives a bound of 0.9813, missing 1 gives 0.9718" in proc.stderr
    assert "0 of 75 normal films (0%) are called likely normal" in proc.stderr
    proc = subprocess.run([*base, "--accept-no-savings"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert out.is_file() and "WARNING: written because of --accept-no-savings" in proc.stdout
    assert "(0/75 normal films set aside" in proc.stdout
