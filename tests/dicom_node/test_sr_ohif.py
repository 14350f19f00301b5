"""A real SR consumer: OHIF's own SR SOP class handler (@ohif/extension-cornerstone-dicom-sr
3.13.13, pinned in tests/support/ohif/package-lock.json) loads every SR the node builds for the
demo's sample films, the generated multi-film studies (as test_node_e2e sends them), the
edge cases (not assessable, a refused non-image instance, nodule/mass) and amended results
(the result series with the replaced SR and the amended one, which names it in its
Predecessor Documents Sequence), under node with only its UI and rendering peers stubbed
(tests/support/ohif/load_sr.js). Each is loaded as the node writes it (Comprehensive 3D SR)
and as the deliverer sends it to a destination without that class: the fallback
Comprehensive SR and Enhanced SR (``results/sr_classes.as_sr_class``).

It must not throw (the old SR made it fail with "Cannot read properties of undefined (reading
'ReferencedSOPSequence')": a measurement group without an SCOORD), must attach one
measurement to each film, and the decision must be among what OHIF extracts (its display-set
label: OHIF ignores CODE items, so the decision reaches it through the Series Description).
For an amended result OHIF must show the amended SR (the series' last by Instance Number),
labelled amended, not the one it replaced.
What OHIF extracted is saved as JSON (``$CXR_TRIAGE_ARTEFACTS/ohif`` or the test's tmp dir).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset
from pydicom import uid as U
from pydicom.uid import generate_uid
from support.artefacts import artefact_dir
from support.ohif_harness import ensure_installed, ohif_load
from support.sr_checks import make_film, save

from cxr_triage.contract.model_file import ModelMetadata
from cxr_triage.contract.result import (
    Decision,
    FilmResult,
    NotAssessableReason,
    StudyResult,
    aggregate_study,
)
from cxr_triage.contract.sop_classes import COMPREHENSIVE_3D_SR
from cxr_triage.dicom_node.results.sr import Amendment, build_result_sr
from cxr_triage.dicom_node.results.sr_classes import COMPREHENSIVE_SR, ENHANCED_SR, SR_CLASS_NAMES, as_sr_class

D, R = Decision, NotAssessableReason
META = ModelMetadata(name="cxr_triage_test_model", version="0.3.1",
                     thresholds={"sens_0.98": 0.2875})
# (SOP class, transfer syntax, films) per generated study: test_node_e2e's GENERATED
GENERATED = [
    ("CR", U.JPEGLosslessSV1, 2),
    ("DX_PRES", U.JPEG2000Lossless, 2),
    ("DX_PROC", U.RLELossless, 1),
    ("SC", U.JPEGLSLossless, 1),
    ("DX_PRES", U.ExplicitVRLittleEndian, 3),
]
#: The classes a result SR reaches a viewer as: as written, then the deliverer's fallbacks.
SR_CLASSES = (COMPREHENSIVE_3D_SR, COMPREHENSIVE_SR, ENHANCED_SR)


@pytest.fixture(scope="module", autouse=True)
def ohif_installed() -> None:
    reason = ensure_installed()
    if reason:
        pytest.skip(reason)


def _film(ds: Dataset, decision: Decision, score: float | None = None,
          reason: NotAssessableReason | None = None) -> FilmResult:
    assessed = reason is None
    return FilmResult(decision=decision, sop_instance_uid=str(ds.SOPInstanceUID),
                      sop_class_uid=str(ds.SOPClassUID), score=score,
                      threshold=0.2875 if assessed else None,
                      operating_point="sens_0.98" if assessed else None, reason=reason,
                      reason_detail=None if assessed else f"gate refused: {reason.value}")


def _by_score(ds: Dataset, score: float) -> FilmResult:
    return _film(ds, D.SUSPICIOUS if score >= 0.2875 else D.LIKELY_NORMAL, score)


def _score_only(film: FilmResult, score: float) -> FilmResult:
    """The film as a model whose nodule/mass flag is not shown sees it (issue 22): score, no flag."""
    film.nodule_score, film.nodule_threshold, film.nodule_flag = score, 0.0874, None
    film.nodule_point = "score only, no flag: at its operating point normals_0.15 it caught 42%, below the 60%"
    return film


def _with_nodule(film: FilmResult, score: float) -> FilmResult:
    """The film as a model with a nodule/mass output sees it (threshold 0.31)."""
    film.nodule_score, film.nodule_threshold, film.nodule_flag = score, 0.31, score >= 0.31
    return film


def _demo_studies(sample_dicoms: dict[str, Path]) -> dict[str, tuple[StudyResult, list[Dataset]]]:
    out = {}
    for i, (name, path) in enumerate(sorted(sample_dicoms.items())):
        ds = pydicom.dcmread(path)
        film = (_film(ds, D.NOT_ASSESSABLE, reason=R.NON_HUMAN) if "canine" in name
                else _by_score(ds, 0.61 + 0.0123456789 * i if i % 2 else 0.0917))
        out[f"demo_{name}"] = (aggregate_study(str(ds.StudyInstanceUID), [film]), [ds])
    return out


def _generated_studies(shared_data: Path, base: Path) -> dict[str, tuple[StudyResult, list[Dataset]]]:
    from cxr_triage.dicom_node.tools.film_to_dicom import films_to_study

    pngs = sorted((shared_data / "nih-cxr14" / "images").glob("*.png"))
    out, k = {}, 0
    for i, (sop, ts, n) in enumerate(GENERATED):
        files = films_to_study(pngs[k:k + n], base / f"study{i}", sop_class=sop,
                               transfer_syntax_uid=ts,
                               bits_stored=12 if ts != U.JPEGLSLossless else 8)
        k += n
        sources = [pydicom.dcmread(f) for f in files]
        films = [_by_score(ds, 0.05 + 0.31 * ((i + j) % 3)) for j, ds in enumerate(sources)]
        out[f"generated_{i}_{sop}"] = (
            aggregate_study(str(sources[0].StudyInstanceUID), films), sources)
    return out


def _edge_studies() -> dict[str, tuple[StudyResult, list[Dataset]]]:
    study_uid = generate_uid()
    a, b = make_film(study_uid, generate_uid(), 1), make_film(study_uid, generate_uid(), 2)
    out = {"not_assessable": (aggregate_study(study_uid, [
        _film(a, D.NOT_ASSESSABLE, reason=R.TOO_SMALL),
        _film(b, D.NOT_ASSESSABLE, reason=R.UNDECODABLE)]), [a, b])}
    study_uid = generate_uid()
    film = make_film(study_uid, generate_uid(), 1)
    earlier = build_result_sr(aggregate_study(study_uid, [_by_score(film, 0.1)]), [film], META)
    out["with_non_image_instance"] = (aggregate_study(study_uid, [
        _by_score(film, 0.1), _film(earlier, D.NOT_ASSESSABLE, reason=R.NON_IMAGE)]),
        [film, earlier])
    study_uid = generate_uid()
    films = [make_film(study_uid, generate_uid(), i) for i in (1, 2, 3)]
    out["nodule_mass"] = (aggregate_study(study_uid, [
        _with_nodule(_by_score(films[0], 0.81), 0.1234), _with_nodule(_by_score(films[1], 0.07), 0.7123),
        _film(films[2], D.NOT_ASSESSABLE, reason=R.LATERAL_VIEW)]), films)
    study_uid = generate_uid()
    films = [make_film(study_uid, generate_uid(), i) for i in (1, 2)]
    out["nodule_score_only"] = (aggregate_study(study_uid, [
        _score_only(_by_score(films[0], 0.81), 0.0815), _score_only(_by_score(films[1], 0.07), 0.1234)]), films)
    return out


def _amendment(earlier: Dataset) -> Amendment:
    """The earlier result as the worker's ``find_amendment`` reads it from the stored SR."""
    return Amendment(result_id=1, sr_sop_instance_uid=str(earlier.SOPInstanceUID),
                     sr_sop_class_uid=str(earlier.SOPClassUID),
                     sr_series_uid=str(earlier.SeriesInstanceUID),
                     sr_instance_number=int(earlier.InstanceNumber))


def _amended_studies() -> dict[str, tuple[list[Dataset], StudyResult]]:
    """Result series with amended results, built as the worker does (``build_result_sr(...,
    amends=...)``): another film arrives after a likely-normal result and turns the study
    suspicious; in the second study not assessable, then likely normal, then suspicious (the
    SR series holds three results, each amending the one before)."""
    out = {}
    study_uid, series_uid = generate_uid(), generate_uid()
    films = [make_film(study_uid, series_uid, i) for i in (1, 2)]
    first = aggregate_study(study_uid, [_by_score(films[0], 0.0917)])
    second = aggregate_study(study_uid, [_by_score(films[0], 0.0917), _by_score(films[1], 0.6612)])
    sr1 = build_result_sr(first, films[:1], META)
    sr2 = build_result_sr(second, films, META, amends=_amendment(sr1))
    out["amended"] = ([sr1, sr2], second)

    study_uid, series_uid = generate_uid(), generate_uid()
    films = [make_film(study_uid, series_uid, i) for i in (1, 2, 3)]
    results = [
        aggregate_study(study_uid, [_film(films[0], D.NOT_ASSESSABLE, reason=R.TOO_SMALL)]),
        aggregate_study(study_uid, [_film(films[0], D.NOT_ASSESSABLE, reason=R.TOO_SMALL),
                                    _by_score(films[1], 0.1234)]),
        aggregate_study(study_uid, [_film(films[0], D.NOT_ASSESSABLE, reason=R.TOO_SMALL),
                                    _by_score(films[1], 0.1234),
                                    _by_score(films[2], 0.4321)]),
    ]
    srs = [build_result_sr(results[0], films[:1], META)]
    for n, result in enumerate(results[1:], start=2):
        srs.append(build_result_sr(result, films[:n], META, amends=_amendment(srs[-1])))
    out["amended_twice"] = (srs, results[-1])
    return out


@dataclass(frozen=True)
class LoadedSR:
    """One SR series as a viewer gets it; OHIF is to show its last SR (``shown``)."""

    paths: list[Path]          # the series' SR files, Instance Number order
    study: StudyResult         # the result in the last SR
    shown: str                 # its SOP Instance UID
    sop_class: str


def _predecessor_problems(name: str, series: list[Dataset]) -> list[str]:
    """Each amended SR names the one before it (same series, next Instance Number): the test
    loads what the node sends, not an SR without the amendment."""
    problems = []
    for before, after in zip(series, series[1:]):
        refs = [(str(se.SeriesInstanceUID), str(ref.ReferencedSOPClassUID),
                 str(ref.ReferencedSOPInstanceUID))
                for st in after.get("PredecessorDocumentsSequence", [])
                for se in st.ReferencedSeriesSequence for ref in se.ReferencedSOPSequence]
        if refs != [(str(before.SeriesInstanceUID), str(before.SOPClassUID), str(before.SOPInstanceUID))]:
            problems.append(f"{name}: predecessor {refs} is not the SR before it")
        if (after.SeriesInstanceUID != before.SeriesInstanceUID
                or int(after.InstanceNumber) != int(before.InstanceNumber) + 1):
            problems.append(f"{name}: the amended SR is not the next instance of the series")
    return problems


@pytest.fixture(scope="module")
def node_srs(sample_dicoms, shared_data, tmp_path_factory) -> dict[str, LoadedSR]:
    """Every case's SR series in each class a viewer may get it as."""
    base = tmp_path_factory.mktemp("ohif_srs")
    studies = {**_demo_studies(sample_dicoms), **_generated_studies(shared_data, base),
               **_edge_studies()}
    series = {name: ([build_result_sr(study, sources, META)], study)
              for name, (study, sources) in studies.items()}
    series.update(_amended_studies())
    out, problems = {}, []
    for name, (srs, study) in series.items():
        for sop_class in SR_CLASSES:
            # as the deliverer sends it (a fallback amended SR names its predecessor's fallback)
            sent = [as_sr_class(sr, sop_class) for sr in srs]
            key = name if sop_class == COMPREHENSIVE_3D_SR else f"{name}.{_slug(sop_class)}"
            problems += _predecessor_problems(key, sent)
            paths = [save(ds, base / f"{key}.{n}.dcm") for n, ds in enumerate(sent, start=1)]
            out[key] = LoadedSR(paths, study, str(sent[-1].SOPInstanceUID), sop_class)
    assert not problems, "\n".join(problems)
    return out


def _slug(sop_class: str) -> str:
    return SR_CLASS_NAMES[sop_class].lower().replace(" ", "_")


def test_ohif_loads_every_sr_and_shows_the_decision(node_srs, tmp_path):
    out = artefact_dir(tmp_path, "ohif")
    problems = []
    for name, case in sorted(node_srs.items()):
        # the series as a PACS may list it (newest first); OHIF orders it by Instance Number
        rc, seen = ohif_load(list(reversed(case.paths)))
        (out / f"{name}.json").write_text(json.dumps(seen, indent=2))
        if rc != 0 or "error" in seen:
            problems.append(f"{name}: OHIF threw: {seen.get('error')}")
            continue
        study = case.study
        label = study.decision.value.replace("_", " ").upper()
        shown = seen["displaySet"]["label"]
        if label not in shown:
            problems.append(f"{name}: decision {label} not in OHIF's label {shown!r}")
        if (seen["displaySet"]["SOPInstanceUID"], seen["displaySet"]["SOPClassUID"]) != (case.shown, case.sop_class):
            problems.append(f"{name}: OHIF shows {seen['displaySet']['SOPInstanceUID']}, not the latest SR")
        if ("(amended)" in shown) != (len(case.paths) > 1):
            problems.append(f"{name}: OHIF's label {shown!r} does not say whether it is amended")
        images = [f for f in study.films if f.reason is not NotAssessableReason.NON_IMAGE]
        measurements = seen["measurements"]
        attached = {m["ReferencedSOPInstanceUID"] for m in measurements if m["loaded"]}
        if attached != {f.sop_instance_uid for f in images} or len(measurements) != len(images):
            problems.append(f"{name}: measurements not attached one per film: {measurements}")
        for film, m in zip(images, measurements):
            labels = {lab["label"]: lab["value"] for lab in m["labels"]}
            if film.score is not None and labels.get("AI abnormality score") != f"{film.score:.2f} 1":
                problems.append(f"{name}: score label {labels}")
            nodule = ({"AI nodule/mass score": f"{film.nodule_score:.2f} 1"}
                      if film.nodule_score is not None else {})
            if film.nodule_flag is not None and film.nodule_threshold is not None:  # no flag: no threshold
                nodule["Nodule/mass threshold"] = f"{film.nodule_threshold:.2f} 1"
            if {k: v for k, v in labels.items() if "odule" in k} != nodule:
                problems.append(f"{name}: nodule/mass labels {labels}")
    assert not problems, "\n".join(problems)
    assert len(node_srs) >= (4 + len(GENERATED) + 2) * len(SR_CLASSES)
    assert {c.sop_class for c in node_srs.values()} == set(SR_CLASSES)
    assert sum(len(c.paths) > 1 for c in node_srs.values()) == 2 * len(SR_CLASSES)


def test_harness_reproduces_the_old_failure(tmp_path):
    """Guard against a vacuous check: a TID 1501 group without an SCOORD (the old study
    group) still makes OHIF's loader throw, and the harness reports it."""
    import highdicom as hd

    study_uid = generate_uid()
    film = make_film(study_uid, generate_uid(), 1)
    sr = build_result_sr(aggregate_study(study_uid, [_by_score(film, 0.5)]), [film], META)
    imaging = next(i for i in sr.ContentSequence
                   if i.ConceptNameCodeSequence[0].CodeValue == "126010")
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="no scoord"))
    imaging.ContentSequence.append(group[0])
    rc, seen = ohif_load(save(sr, tmp_path / "old.dcm"))
    assert rc == 1 and "ReferencedSOPSequence" in seen["error"]
