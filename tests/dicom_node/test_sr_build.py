"""The result SR: conformant (dciodvfy, dsrdump), filed into the source study, and read back
to the same decision, score and references (the evaluation harness relies on that)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from support.sr_checks import dciodvfy_errors, dsrdump_tree, make_film, reread, save

from cxr_triage.contract.model_file import ModelMetadata
from cxr_triage.contract.result import (
    Decision,
    FilmResult,
    NotAssessableReason,
    aggregate_study,
)
from cxr_triage.dicom_node.results import sr_codes
from cxr_triage.dicom_node.results.sr import SERIES_PREFIX, build_result_sr
from cxr_triage.dicom_node.results.sr_content import study_reasons
from cxr_triage.dicom_node.results.sr_header import device_uid, header_description
from cxr_triage.dicom_node.results.sr_reader import read_result_sr

PATIENT_STUDY = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
    "AccessionNumber", "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName",
)

D, R = Decision, NotAssessableReason
SCENARIOS = {
    "suspicious": [(D.SUSPICIOUS, 0.8123456789, None), (D.LIKELY_NORMAL, 0.0731, None),
                   (D.NOT_ASSESSABLE, None, R.LATERAL_VIEW)],
    "likely_normal": [(D.LIKELY_NORMAL, 0.2104, None), (D.LIKELY_NORMAL, 0.0519, None)],
    "not_assessable": [(D.NOT_ASSESSABLE, None, R.TOO_SMALL),
                       (D.NOT_ASSESSABLE, None, R.UNDECODABLE)],
}


@pytest.fixture(scope="module")
def meta() -> ModelMetadata:
    return ModelMetadata(name="cxr_triage_test_model", version="0.3.1",
                         thresholds={"sens_0.95": 0.41, "sens_0.98": 0.2875, "sens_0.99": 0.19})


def film_result(ds: pydicom.Dataset, decision: Decision, score: float | None,
                reason: NotAssessableReason | None, meta: ModelMetadata) -> FilmResult:
    op, thr = meta.threshold()
    return FilmResult(
        decision=decision, sop_instance_uid=str(ds.SOPInstanceUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
        study_instance_uid=str(ds.StudyInstanceUID), sop_class_uid=str(ds.SOPClassUID),
        score=score, threshold=None if reason else thr, operating_point=None if reason else op,
        model_name=meta.name, model_version=meta.version, reason=reason,
        reason_detail=f"gate refused: {reason.value}" if reason else None,
    )


def assert_valid(path: Path) -> str:
    assert dciodvfy_errors(path) == []
    tree = dsrdump_tree(path)
    assert "TID 1500" in tree
    return tree


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_generated_study_round_trip(scenario, meta, tmp_path):
    study_uid = generate_uid()
    series_uid = generate_uid()
    specs = SCENARIOS[scenario]
    sources = [make_film(study_uid, series_uid, i + 1) for i in range(len(specs))]
    films = [film_result(ds, *spec, meta) for ds, spec in zip(sources, specs)]
    study = aggregate_study(study_uid, films)
    assert study.decision.value == scenario

    sr = build_result_sr(study, sources, meta)
    path = save(sr, tmp_path / "sr.dcm")
    tree = assert_valid(path)
    assert "Image Region" in tree and "selected from IMAGE" in tree

    back = reread(path)
    for keyword in PATIENT_STUDY:
        assert str(back.get(keyword)) == str(sources[0].get(keyword)), keyword
    assert back.Modality == "SR"
    assert back.SeriesInstanceUID not in {series_uid}
    assert back.SeriesDescription == header_description(SERIES_PREFIX, study.decision,
                                                        study_reasons(study))
    assert study.decision.value.replace("_", " ").upper() in back.SeriesDescription
    assert "not for diagnosis" in back.SeriesDescription and len(back.SeriesDescription) <= 64
    assert back.SeriesDate and back.SeriesTime
    assert (back.CompletionFlag, back.VerificationFlag, back.PreliminaryFlag) == (
        "COMPLETE", "UNVERIFIED", "PRELIMINARY")

    parsed = read_result_sr(back)
    assert parsed.decision is study.decision
    assert parsed.score == study.score  # exact: the NUM's Floating Point Value
    assert parsed.operating_point == meta.default_operating_point
    assert parsed.threshold == pytest.approx(meta.thresholds[meta.default_operating_point])
    assert (parsed.model_name, parsed.model_version) == (meta.name, meta.version)
    source_uids = [str(ds.SOPInstanceUID) for ds in sources]
    assert sorted(parsed.evidence_sop_instance_uids) == sorted(source_uids)
    assert sorted(parsed.study.referenced_sop_instance_uids) == sorted(source_uids)
    assert [g.sop_instance_uid for g in parsed.films] == source_uids
    for film, group in zip(films, parsed.films):
        assert group.decision is film.decision
        assert group.reason is film.reason
        assert group.reason_detail == film.reason_detail
        assert group.score == film.score
        assert parsed.film(film.sop_instance_uid) is group


@pytest.mark.parametrize(
    "name, decision, reason",
    [
        ("siim_cr_chest_pa", D.SUSPICIOUS, None),
        ("nih_gcp_dx_chest_nofinding", D.LIKELY_NORMAL, None),
        ("highdicom_dx_canine_thorax_mono1", D.NOT_ASSESSABLE, R.NON_HUMAN),
    ],
)
def test_real_sample_sr_is_valid_and_filed_in_source_study(name, decision, reason,
                                                           sample_dicoms, meta, tmp_path):
    source = pydicom.dcmread(sample_dicoms[name])
    score = {D.SUSPICIOUS: 0.66, D.LIKELY_NORMAL: 0.04}.get(decision)
    film = film_result(source, decision, score, reason, meta)
    study = aggregate_study(str(source.StudyInstanceUID), [film])

    path = save(build_result_sr(study, [source], meta), tmp_path / "sr.dcm")
    assert_valid(path)
    back = reread(path)
    assert back.StudyInstanceUID == source.StudyInstanceUID
    assert back.PatientID == source.PatientID
    assert str(back.PatientName) == str(source.PatientName)
    parsed = read_result_sr(back)
    assert parsed.decision is decision
    assert parsed.films[0].sop_instance_uid == source.SOPInstanceUID
    assert parsed.films[0].reason is reason


def test_header_identity_and_private_scheme(meta, tmp_path):
    study_uid = generate_uid()
    source = make_film(study_uid, generate_uid(), 1,
                       procedure_code=("24648-8", "LN", "XR Chest PA upright"))
    study = aggregate_study(study_uid, [film_result(source, D.LIKELY_NORMAL, 0.1, None, meta)])
    series_uid, sop_uid = generate_uid(), generate_uid()
    sr = build_result_sr(study, [source], meta, series_uid=series_uid, sop_instance_uid=sop_uid,
                         institution_name="Test Hospital")
    assert (sr.SeriesInstanceUID, sr.SOPInstanceUID) == (series_uid, sop_uid)
    assert sr.InstitutionName == "Test Hospital"
    # The image's own procedure code is the procedure reported.
    assert "(24648-8,LN," in dsrdump_tree(save(sr, tmp_path / "sr.dcm"))
    schemes = {item.CodingSchemeDesignator for item in sr.CodingSchemeIdentificationSequence}
    assert sr_codes.SCHEME in schemes
    ihe = [item for item in sr.ContributingEquipmentSequence
           if item.PurposeOfReferenceCodeSequence[0].CodeValue == "Newcode1"]
    assert len(ihe) == 1
    assert ihe[0].SoftwareVersions == meta.version
    assert ihe[0].DeviceUID == device_uid(meta)
    newer = ModelMetadata(name=meta.name, version="0.3.2", thresholds=meta.thresholds)
    assert device_uid(newer) != device_uid(meta)
    assert device_uid(meta) == device_uid(ModelMetadata(name=meta.name, version=meta.version))


def test_procedure_defaults_to_xr_unspecified(meta, tmp_path):
    study_uid = generate_uid()
    source = make_film(study_uid, generate_uid(), 1)
    study = aggregate_study(study_uid, [film_result(source, D.LIKELY_NORMAL, 0.1, None, meta)])
    tree = dsrdump_tree(save(build_result_sr(study, [source], meta), tmp_path / "sr.dcm"))
    assert '(43468-8,LN,"XR unspecified body region")' in tree


def test_patient_name_never_reaches_warnings(meta):
    """highdicom warns about single-component names quoting them: PHI must not leak."""
    study_uid = generate_uid()
    source = make_film(study_uid, generate_uid(), 1)
    source.PatientName = "Singlename"
    study = aggregate_study(study_uid, [film_result(source, D.LIKELY_NORMAL, 0.1, None, meta)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_result_sr(study, [source], meta)
    assert not [w for w in caught if "Singlename" in str(w.message)]


def test_rejects_foreign_sources_and_unmatched_films(meta):
    study_uid = generate_uid()
    own = make_film(study_uid, generate_uid(), 1)
    other = make_film(generate_uid(), generate_uid(), 2)
    film = film_result(own, D.LIKELY_NORMAL, 0.1, None, meta)
    with pytest.raises(ValueError, match="other studies"):
        build_result_sr(aggregate_study(study_uid, [film]), [own, other], meta)
    stray = film_result(make_film(study_uid, generate_uid(), 3), D.SUSPICIOUS, 0.9, None, meta)
    with pytest.raises(ValueError, match="without a matching source"):
        build_result_sr(aggregate_study(study_uid, [film, stray]), [own], meta)
    with pytest.raises(ValueError):
        build_result_sr(aggregate_study(study_uid, [film]), [], meta)


def test_reader_refuses_other_objects(sample_dicoms):
    with pytest.raises(ValueError):
        read_result_sr(pydicom.dcmread(sample_dicoms["siim_cr_chest_pa"]))


def test_code_mapping_is_complete_and_unambiguous():
    assert set(sr_codes.DECISION_CODES) == set(Decision)
    assert set(sr_codes.REASON_CODES) == set(NotAssessableReason)
    private = [row for row in sr_codes.mapping_table() if row[2] == sr_codes.SCHEME]
    values = [row[1] for row in private]
    assert len(values) == len(set(values))
    assert all(len(v) <= 16 for v in values)  # Code Value is SH
    for decision, code in sr_codes.DECISION_CODES.items():
        assert sr_codes.decision_from_code(code) is decision
    for reason, code in sr_codes.REASON_CODES.items():
        assert sr_codes.reason_from_code(code) is reason


def test_validator_helper_reports_errors(tmp_path):
    """Guard against a vacuous check: dciodvfy must flag a value its VR forbids."""
    bad = make_film(generate_uid(), generate_uid(), 1)
    with pytest.warns(UserWarning):
        bad.PatientAge = "62"
    assert dciodvfy_errors(save(bad, tmp_path / "bad.dcm"))


def test_conformance_result_codes_table_matches_the_mapping():
    from cxr_triage.paths import repo_root

    conformance = (repo_root() / "docs" / "conformance.md").read_text()
    for what, value, scheme, meaning in sr_codes.mapping_table():
        assert f"| {what} | `{value}` | {scheme} | {meaning} |" in conformance


def test_reader_turns_unknown_codes_into_value_error(meta):
    study_uid = generate_uid()
    source = make_film(study_uid, generate_uid(), 1)
    sr = build_result_sr(
        aggregate_study(study_uid, [film_result(source, D.SUSPICIOUS, 0.9, None, meta)]),
        [source], meta)
    decision = sr_codes.DECISION_CODES[D.SUSPICIOUS]
    for item in sr.ContentSequence:  # rewrite the decision code to one the mapping lacks
        for group in item.get("ContentSequence", []):
            for sub in group.get("ContentSequence", []):
                concept = sub.get("ConceptCodeSequence")
                if concept and concept[0].CodeValue == decision.value:
                    concept[0].CodeValue = "CXRT999"
    with pytest.raises(ValueError, match="not a readable"):
        read_result_sr(sr)


def test_non_image_instance_in_study_is_still_referenced(meta, tmp_path):
    """A refused non-image instance (here an earlier SR of the study) stays in the evidence
    and in its film group, and the SR stays valid."""
    study_uid = generate_uid()
    film = make_film(study_uid, generate_uid(), 1)
    first = build_result_sr(
        aggregate_study(study_uid, [film_result(film, D.LIKELY_NORMAL, 0.1, None, meta)]),
        [film], meta)
    refused = film_result(first, D.NOT_ASSESSABLE, None, R.NON_IMAGE, meta)
    study = aggregate_study(
        study_uid, [film_result(film, D.LIKELY_NORMAL, 0.1, None, meta), refused])
    path = save(build_result_sr(study, [film, first], meta), tmp_path / "sr.dcm")
    assert_valid(path)
    parsed = read_result_sr(reread(path))
    assert parsed.decision is D.LIKELY_NORMAL
    assert parsed.film(str(first.SOPInstanceUID)).reason is R.NON_IMAGE
    assert str(first.SOPInstanceUID) in parsed.evidence_sop_instance_uids


def test_odd_real_world_headers_still_give_a_valid_sr(meta, tmp_path):
    """Missing Modality and Type 2 attributes, a malformed age and sex: the SR is still
    built, valid, and carries no invalid copied value."""
    study_uid = generate_uid()
    source = make_film(study_uid, generate_uid(), 1)
    for keyword in ("Modality", "StudyDate", "StudyTime", "AccessionNumber", "StudyID",
                    "ReferringPhysicianName", "PatientBirthDate"):
        delattr(source, keyword)
    with pytest.warns(UserWarning):
        source.PatientAge = "62"
    source.PatientSex = "MALE"
    study = aggregate_study(study_uid, [film_result(source, D.SUSPICIOUS, 0.9, None, meta)])
    path = save(build_result_sr(study, [source], meta), tmp_path / "sr.dcm")
    assert_valid(path)
    back = reread(path)
    assert "PatientAge" not in back and back.PatientSex == ""
    assert read_result_sr(back).film(str(source.SOPInstanceUID)).decision is D.SUSPICIOUS


def test_structure_for_viewers_and_renderers(meta, tmp_path):
    """What OHIF and generic renderers need: the study decision first (report-level
    Qualitative Evaluations), an image region on its film in every measurement group, every
    container SEPARATE, displayed values rounded while the exact value is kept."""
    study_uid = generate_uid()
    sources = [make_film(study_uid, generate_uid(), i) for i in (1, 2)]
    films = [film_result(sources[0], D.SUSPICIOUS, 0.8123456789, None, meta),
             film_result(sources[1], D.NOT_ASSESSABLE, None, R.LATERAL_VIEW, meta)]
    back = reread(save(build_result_sr(aggregate_study(study_uid, films), sources, meta),
                       tmp_path / "sr.dcm"))
    root_items = back.ContentSequence
    first = root_items[0]
    assert first.ConceptNameCodeSequence[0].CodeValue == sr_codes.QUALITATIVE_EVALUATIONS.value
    decision = first.ContentSequence[0]
    assert decision.ConceptNameCodeSequence[0].CodeValue == sr_codes.TRIAGE_DECISION.value
    assert decision.ConceptCodeSequence[0].CodeValue == sr_codes.DECISION_CODES[D.SUSPICIOUS].value

    def walk(items):
        for item in items:
            yield item
            yield from walk(item.get("ContentSequence", []))

    containers = [back] + [i for i in walk(root_items) if i.ValueType == "CONTAINER"]
    assert {c.ContinuityOfContent for c in containers} == {"SEPARATE"}
    imaging = next(i for i in root_items
                   if i.ConceptNameCodeSequence[0].CodeValue == "126010")
    groups = list(imaging.ContentSequence)
    assert len(groups) == 2
    for group, source in zip(groups, sources):
        scoords = [i for i in group.ContentSequence if i.ValueType == "SCOORD"]
        assert len(scoords) == 1
        ref = scoords[0].ContentSequence[0].ReferencedSOPSequence[0]
        assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert list(scoords[0].GraphicData) == [0, 0, 64, 0, 64, 64, 0, 64, 0, 0]
    library = next(i for i in root_items if i.ConceptNameCodeSequence[0].CodeValue == "111028")
    assert len(library.ContentSequence[0].ContentSequence) == 2
    nums = [i for i in walk(root_items) if i.ValueType == "NUM"
            and i.ConceptNameCodeSequence[0].CodeValue == sr_codes.ABNORMALITY_SCORE.value]
    assert {str(n.MeasuredValueSequence[0].NumericValue) for n in nums} == {"0.8123"}
    assert {n.MeasuredValueSequence[0].FloatingPointValue for n in nums} == {0.8123456789}
    # the not-assessable film shows no threshold (none was applied)
    assert not [i for i in groups[1].ContentSequence if i.ValueType == "NUM"]
    parsed = read_result_sr(back)
    assert parsed.decision is D.SUSPICIOUS and parsed.study.reason is None
    assert parsed.films[1].threshold is None and parsed.films[1].reason is R.LATERAL_VIEW


@pytest.mark.parametrize("decision", list(Decision))
def test_series_description_fits_lo_and_carries_the_decision(decision):
    reason_sets = [[]] if decision is not D.NOT_ASSESSABLE else (
        [[r] for r in NotAssessableReason] + [list(NotAssessableReason)])
    for reasons in reason_sets:
        for prefix in (SERIES_PREFIX, "AI triage summary"):
            text = header_description(prefix, decision, reasons)
            assert len(text) <= 64, text
            assert text.startswith(prefix + ": " + decision.value.replace("_", " ").upper())
            assert text.endswith("not for diagnosis"), text
            assert text.isascii()


def test_not_assessable_study_reason_is_report_level(meta, tmp_path):
    study_uid = generate_uid()
    source = make_film(study_uid, generate_uid(), 1)
    study = aggregate_study(study_uid, [film_result(source, D.NOT_ASSESSABLE, None,
                                                    R.TOO_SMALL, meta)])
    back = reread(save(build_result_sr(study, [source], meta), tmp_path / "sr.dcm"))
    assert "(image too small)" in back.SeriesDescription
    parsed = read_result_sr(back)
    assert parsed.decision is D.NOT_ASSESSABLE and parsed.study.reason is R.TOO_SMALL
    assert parsed.score is None


# -- the nodule/mass output of a multi-task model -------------------------------------------

NODULE_CODES = {sr_codes.NODULE_MASS_SCORE.value, sr_codes.NODULE_MASS_THRESHOLD.value,
                sr_codes.NODULE_MASS_FLAG.value}


def _walk(items):
    for item in items:
        yield item
        yield from _walk(item.get("ContentSequence", []))


def _concepts(ds: pydicom.Dataset) -> set[str]:
    return {str(i.ConceptNameCodeSequence[0].CodeValue) for i in _walk(ds.ContentSequence)
            if "ConceptNameCodeSequence" in i}


def with_nodule(film: FilmResult, score: float, threshold: float = 0.31) -> FilmResult:
    film.nodule_score, film.nodule_threshold, film.nodule_flag = score, threshold, score >= threshold
    return film


def test_nodule_mass_result_round_trip(meta, tmp_path):
    """Per film and for the study: the nodule/mass score (rounded for display, exact in the
    Floating Point Value), its threshold and the flag (Present/Absent) are written, valid, and
    read back exactly; a not-assessable film has none. The flag never changes the decision."""
    study_uid = generate_uid()
    sources = [make_film(study_uid, generate_uid(), i + 1) for i in range(3)]
    films = [with_nodule(film_result(sources[0], D.SUSPICIOUS, 0.8123456789, None, meta), 0.123456789),
             with_nodule(film_result(sources[1], D.LIKELY_NORMAL, 0.0731, None, meta), 0.7123456789),
             film_result(sources[2], D.NOT_ASSESSABLE, None, R.LATERAL_VIEW, meta)]
    study = aggregate_study(study_uid, films)
    assert (study.decision, study.nodule_flag, study.nodule_score) == (D.SUSPICIOUS, True, 0.7123456789)
    path = save(build_result_sr(study, sources, meta), tmp_path / "sr.dcm")
    tree = assert_valid(path)
    assert '(CXRT022,99CXRT,"AI nodule/mass flag")=(52101004,SCT,"Present")' in tree
    assert '(CXRT022,99CXRT,"AI nodule/mass flag")=(272519000,SCT,"Absent")' in tree
    back = reread(path)
    nums = [i for i in _walk(back.ContentSequence) if i.ValueType == "NUM"
            and i.ConceptNameCodeSequence[0].CodeValue == sr_codes.NODULE_MASS_SCORE.value]
    assert sorted(str(n.MeasuredValueSequence[0].NumericValue) for n in nums) == ["0.1235", "0.7123", "0.7123"]
    parsed = read_result_sr(back)
    assert parsed.decision is D.SUSPICIOUS
    assert (parsed.nodule_score, parsed.nodule_threshold, parsed.nodule_flag) == (0.7123456789, 0.31, True)
    assert parsed.study.nodule_flag is True
    for film, group in zip(films, parsed.films):
        assert (group.nodule_score, group.nodule_threshold, group.nodule_flag) == (
            film.nodule_score, film.nodule_threshold, film.nodule_flag)
        assert group.decision is film.decision and group.score == film.score
    assert parsed.films[2].nodule_flag is None
    # the study is not flagged when no film is; the flag is still written (Absent)
    study_uid = generate_uid()
    source = make_film(study_uid, generate_uid(), 1)
    quiet = aggregate_study(study_uid, [with_nodule(film_result(source, D.LIKELY_NORMAL, 0.1, None, meta), 0.2)])
    parsed = read_result_sr(reread(save(build_result_sr(quiet, [source], meta), tmp_path / "quiet.dcm")))
    assert (parsed.nodule_flag, parsed.films[0].nodule_flag, parsed.films[0].nodule_score) == (False, False, 0.2)


def test_model_without_nodule_output_writes_no_nodule_items(meta, tmp_path):
    study_uid = generate_uid()
    sources = [make_film(study_uid, generate_uid(), i + 1) for i in range(2)]
    films = [film_result(sources[0], D.SUSPICIOUS, 0.9, None, meta),
             film_result(sources[1], D.NOT_ASSESSABLE, None, R.TOO_SMALL, meta)]
    path = save(build_result_sr(aggregate_study(study_uid, films), sources, meta), tmp_path / "sr.dcm")
    assert_valid(path)
    back = reread(path)
    assert not _concepts(back) & NODULE_CODES
    parsed = read_result_sr(back)
    assert parsed.nodule_score is None and parsed.nodule_flag is None and parsed.nodule_threshold is None
    assert all(g.nodule_score is None and g.nodule_flag is None for g in parsed.films)


def test_reader_refuses_a_nodule_flag_that_is_not_present_or_absent(meta):
    study_uid = generate_uid()
    source = make_film(study_uid, generate_uid(), 1)
    sr = build_result_sr(aggregate_study(study_uid, [
        with_nodule(film_result(source, D.SUSPICIOUS, 0.9, None, meta), 0.5)]), [source], meta)
    for item in _walk(sr.ContentSequence):
        if item.get("ValueType") == "CODE" and \
                item.ConceptNameCodeSequence[0].CodeValue == sr_codes.NODULE_MASS_FLAG.value:
            item.ConceptCodeSequence[0].CodeValue = "CXRT999"
    with pytest.raises(ValueError, match="not a readable"):
        read_result_sr(sr)


def test_not_assessable_study_states_the_served_operating_point(meta, tmp_path):
    """Issue 24 re-run: under --site-threshold a study no film was scored in said the model's
    stored point (sens_0.98) in its SR and HL7; the worker's aggregate stage gives it the served one."""
    from types import SimpleNamespace

    from cxr_triage.dicom_node.delivery.hl7 import build_oru
    from cxr_triage.dicom_node.worker.stages import StudyJob, aggregate

    study_uid = generate_uid()
    source = make_film(study_uid, generate_uid(), 1)
    job = StudyJob(study_uid, [], films=[film_result(source, D.NOT_ASSESSABLE, None, R.LATERAL_VIEW, meta)])
    served = SimpleNamespace(meta=meta, operating_point="site:s24:sens_0.98_lb95", threshold=0.1234)
    aggregate(SimpleNamespace(triager=served), job)  # type: ignore[arg-type]
    back = reread(save(build_result_sr(job.study_result(), [source], meta), tmp_path / "sr.dcm"))
    parsed = read_result_sr(back)
    assert (parsed.operating_point, parsed.threshold) == ("site:s24:sens_0.98_lb95", pytest.approx(0.1234))
    oru = build_oru(back, control_id="1", sending_application="CXRTRIAGE", receiving_application="RIS")
    assert "site:s24:sens_0.98_lb95" in oru and "|sens_0.98|" not in oru and "0.2875" not in oru


SCORE_ONLY = ("score only, no flag: at its operating point normals_0.15 (15% of validation normals at or "
              "above it) it caught 42% of validation Nodule/Mass films, below the 60% a flag needs")


def score_only(film: FilmResult, score: float) -> FilmResult:
    """The film as the worker scores it with a model whose nodule/mass flag is not shown."""
    film.nodule_score, film.nodule_threshold, film.nodule_flag = score, 0.0874, None
    film.nodule_point = SCORE_ONLY
    return film


def test_nodule_score_without_flag_states_why(meta, tmp_path):
    """Issue 22: a model whose nodule/mass flag is not shown still gives its score, per film and
    for the study (NUM CXRT020), with no flag and no threshold item, and the report level says
    plainly that no flag is given and why (TEXT CXRT023); valid, and read back."""
    study_uid = generate_uid()
    sources = [make_film(study_uid, generate_uid(), i + 1) for i in range(2)]
    films = [score_only(film_result(sources[0], D.SUSPICIOUS, 0.81, None, meta), 0.0815),
             score_only(film_result(sources[1], D.LIKELY_NORMAL, 0.07, None, meta), 0.1234)]
    study = aggregate_study(study_uid, films)
    assert (study.nodule_flag, study.nodule_score) == (None, 0.1234)
    path = save(build_result_sr(study, sources, meta), tmp_path / "sr.dcm")
    tree = assert_valid(path)
    # dsrdump shortens long text: the start says it, the read-back below has it whole
    assert '(CXRT023,99CXRT,"AI nodule/mass operating point")="score only, no flag' in tree
    back = reread(path)
    concepts = _concepts(back)
    assert sr_codes.NODULE_MASS_SCORE.value in concepts
    assert not concepts & {sr_codes.NODULE_MASS_FLAG.value, sr_codes.NODULE_MASS_THRESHOLD.value}
    parsed = read_result_sr(back)
    assert (parsed.nodule_score, parsed.nodule_threshold, parsed.nodule_flag) == (0.1234, None, None)
    assert parsed.nodule_point == SCORE_ONLY
    assert [(g.nodule_score, g.nodule_flag) for g in parsed.films] == [(0.0815, None), (0.1234, None)]


def test_shown_nodule_flag_states_its_point(meta, tmp_path):
    """A model whose flag is shown: the flag and threshold as before, and the point's share of
    validation normals and sensitivity in words beside them."""
    study_uid = generate_uid()
    source = make_film(study_uid, generate_uid(), 1)
    film = with_nodule(film_result(source, D.SUSPICIOUS, 0.9, None, meta), 0.5, 0.0874)
    film.nodule_point = ("flag at operating point normals_0.15: flagged when score >= 0.0874 (15% of validation "
                         "normals at or above it); it caught 72% of validation Nodule/Mass films")
    path = save(build_result_sr(aggregate_study(study_uid, [film]), [source], meta), tmp_path / "sr.dcm")
    assert '(CXRT023,99CXRT,"AI nodule/mass operating point")="flag at operating point' in assert_valid(path)
    parsed = read_result_sr(reread(path))
    assert (parsed.nodule_flag, parsed.nodule_threshold, parsed.nodule_point) == (True, 0.0874, film.nodule_point)
