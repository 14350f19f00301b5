"""The nodule/mass point in words (issue 22): what every output says about the flag, from the
model's own metadata (``contract.nodule_point``), for a model whose flag is not shown (score
only, and why) and one whose flag is shown (its share of normals and sensitivity)."""

from __future__ import annotations

from types import SimpleNamespace

from cxr_triage.contract.model_file import ModelMetadata
from cxr_triage.contract.nodule_point import MIN_FLAG_SENSITIVITY, nodule_point
from cxr_triage.contract.result import Decision, FilmResult
from cxr_triage.inference.cli import format_table, nodule_cell
from cxr_triage.training import calibrate


def nodule_meta(sensitivity: float, shown: bool) -> ModelMetadata:
    """A model whose default nodule/mass point ``normals_0.15`` flags 14.9% of validation
    normals and catches ``sensitivity`` of the Nodule/Mass films."""
    points = {"normals_0.15": {"threshold": 0.0874, "normals_flagged": 0.149, "sensitivity": sensitivity}}
    return ModelMetadata(
        name="m", version="1", thresholds={"sens_0.98": 0.31}, nodule_thresholds={"normals_0.15": 0.0874,
                                                                                 "sens_0.9": 0.06},
        nodule_default_operating_point="normals_0.15", nodule_flag_shown=shown,
        validation_metrics={"nodule": {"flag_rate_points": points,
                                       "operating_points": {"sens_0.9": {"sensitivity": 0.9, "specificity": 0.5}}}})


def test_score_only_says_no_flag_and_why():
    text = nodule_point(nodule_meta(0.4222, shown=False)).statement()
    assert text == ("score only, no flag: at its operating point normals_0.15 (15% of validation normals "
                    "at or above it) it caught 42% of validation Nodule/Mass films, below the 60% a flag needs")


def test_shown_flag_states_its_point():
    point = nodule_point(nodule_meta(0.72, shown=True))
    assert point is not None and point.shown
    assert point.statement() == ("flag at operating point normals_0.15: flagged when score >= 0.0874 (15% of "
                                 "validation normals at or above it); it caught 72% of validation Nodule/Mass films")
    # a sensitivity-named point: its sensitivity, its share of normals not stored
    assert nodule_point(nodule_meta(0.72, shown=True), "sens_0.9").statement().endswith(
        "flagged when score >= 0.0600; it caught 90% of validation Nodule/Mass films")


def test_no_nodule_output_no_point():
    assert nodule_point(ModelMetadata(name="m", version="1")) is None


def test_training_states_the_same_rule():
    assert calibrate.MIN_FLAG_SENSITIVITY == MIN_FLAG_SENSITIVITY


def _film(score: float, flag: bool | None) -> FilmResult:
    return FilmResult(decision=Decision.SUSPICIOUS, source="a.dcm", score=0.9, nodule_score=score,
                      nodule_threshold=0.0874, nodule_flag=flag)


def test_predict_table_score_only_and_flagged():
    """``predict``: the score without a flag and the footer's reason; a shown flag states its point."""
    assert nodule_cell(_film(0.0815, None)) == "0.082 (no flag)"
    assert nodule_cell(_film(0.2, True)) == "FLAGGED 0.200"
    for shown, flag, cell, footer in ((False, None, "0.082 (no flag)", "nodule/mass score only, no flag: "),
                                      (True, False, "no 0.082", "nodule/mass flag at operating point normals_0.15")):
        meta = nodule_meta(0.72 if shown else 0.42, shown)
        triager = SimpleNamespace(meta=meta, operating_point="sens_0.98", threshold=0.31,
                                  nodule_operating_point="normals_0.15", nodule_threshold=0.0874,
                                  nodule_point=nodule_point(meta))
        table = format_table([_film(0.0815, flag)], triager)
        assert cell in table and footer in table
        assert ("flagged when score >= 0.0874" in table) is shown


def test_a_point_without_stored_figures_says_so():
    meta = ModelMetadata(name="m", version="1", nodule_thresholds={"sens_0.8": 0.6}, nodule_default_operating_point="sens_0.8")
    assert nodule_point(meta).statement() == ("flag at operating point sens_0.8: flagged when score >= 0.6000; its "
                                              "sensitivity on validation Nodule/Mass films is not stored in the model")
