"""Issue 15 (gate part): "frontal" is an allow-list (PA, AP and the CID 4010 codes for them);
every other view, in any attribute that carries the view, is refused with that attribute named.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import Dataset
from pydicom.sequence import Sequence
from pydicom.sr.codedict import Collection, codes
from support.quirk_films import PATIENT

from cxr_triage.config import load_config
from cxr_triage.contract.result import Decision, NotAssessable
from cxr_triage.contract.result import NotAssessableReason as R
from cxr_triage.dicom_node.tools.film_to_dicom import png_to_dicom
from cxr_triage.inference import gate
from cxr_triage.inference.gate import check_header

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR")


@pytest.fixture(scope="module")
def png(shared_data: Path) -> Path:
    return sorted((shared_data / "nih-cxr14" / "images").glob("*.png"))[1]


@pytest.fixture
def dx(png: Path) -> Dataset:
    """An adult DX chest with the view left to each test (no View Position, no View Code)."""
    ds = png_to_dicom(png, sop_class="DX_PRES", bits_stored=12, view_position="", **PATIENT)
    ds.SeriesDescription = "CHEST"
    assert "ViewCodeSequence" not in ds
    check_header(ds)
    return ds


def _code(value: str, scheme: str, meaning: str, **nested: list[Dataset]) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    for keyword, items in nested.items():
        setattr(item, keyword, Sequence(items))
    return item


def refusal(ds: Dataset) -> NotAssessable:
    with pytest.raises(NotAssessable) as exc:
        check_header(ds)
    assert exc.value.reason is R.LATERAL_VIEW, exc.value
    return exc.value


# ----------------------------------------------------------------------------- case 3

def test_issue15_case3_oblique_view_code_is_refused(dx, png, tiny_model):
    """View Position empty, View Code Sequence (399356000, SCT, "right anterior oblique"): was
    scored (likely normal) while View Position LLO on the same film was refused."""
    dx.ViewCodeSequence = Sequence([_code("399356000", "SCT", "right anterior oblique")])
    exc = refusal(dx)
    assert "View Code Sequence" in exc.detail and "right anterior oblique" in exc.detail

    from cxr_triage.inference.pipeline import Triager

    triager = Triager(load_config(None, environ={}).replace(inference={"model_path": str(tiny_model), "threads": 1}))
    result = triager.triage_dataset(dx, source="rao.dcm")
    assert result.decision is Decision.NOT_ASSESSABLE and result.reason is R.LATERAL_VIEW and result.score is None


# ----------------------------------------------------------------------------- the allow-list

def test_frontal_codes_are_those_of_cid_4010():
    """The gate's table checked against pydicom's copy of PS3.16 CID 4010 "DX View"."""
    cid = {c.value: c.meaning for c in Collection("CID4010").concepts.values()}
    sct = {v: m for v, m in gate.FRONTAL_VIEW_CODES.items() if v[0].isdigit()}
    assert sct == {v: cid[v] for v in sct}  # every SCT code is in CID 4010, with that meaning
    assert set(sct) == FRONTAL_SCT and set(sct.values()) == {"postero-anterior", "antero-posterior", "frontal"}
    # 399352003 is lateral-medial, not antero-posterior
    assert cid["399352003"] == "lateral-medial" and "399352003" not in gate.FRONTAL_VIEW_CODES


#: PS3.16 CID 4010's frontal projections, by pydicom's copy of it
FRONTAL_SCT = {codes.SCT.PosteroAnterior.value, codes.SCT.AnteroPosterior.value, codes.SCT.Frontal.value}
NON_FRONTAL_CID_4010 = sorted(
    (c.value, c.meaning) for c in Collection("CID4010").concepts.values() if c.value not in FRONTAL_SCT
)


@pytest.mark.parametrize("value,meaning", NON_FRONTAL_CID_4010, ids=[m for _, m in NON_FRONTAL_CID_4010])
def test_every_other_cid_4010_view_is_refused(dx, value, meaning):
    dx.ViewCodeSequence = Sequence([_code(value, "SCT", meaning)])
    assert "View Code Sequence" in refusal(dx).detail


@pytest.mark.parametrize("value,scheme", [
    ("272479007", "SCT"), ("399348003", "SCT"), ("399033003", "SCT"),
    ("R-10214", "SRT"), ("R-10206", "SRT"), ("R-10206", "SNM3"), ("R-10214", "99SDM"),
    ("272479007 ", "sct"), ("399348003\x00", " SCT "),  # padding and case
])
def test_frontal_view_codes_pass(dx, value, scheme):
    dx.ViewCodeSequence = Sequence([_code(value, scheme, "frontal view")])
    check_header(dx)
    dx.ViewPosition = "PA"
    check_header(dx)


@pytest.mark.parametrize("view", ["PA", "AP", "pa", " AP ", "PA\x00", "ap\x00"])
def test_frontal_view_positions_pass(dx, view):
    dx.ViewPosition = view
    check_header(dx)


@pytest.mark.parametrize("view", ["LL", "RL", "RLD", "LLD", "RLO", "LLO", "LAT", "OBLIQUE", "llo", "PA LAT", "XYZ"])
def test_every_other_view_position_is_refused(dx, view):
    dx.ViewPosition = view
    assert "View Position" in refusal(dx).detail


def test_a_non_frontal_code_overrules_a_frontal_view_position(dx):
    dx.ViewPosition = "PA"
    dx.ViewCodeSequence = Sequence([_code("399135007", "SCT", "left anterior oblique")])
    assert "View Code Sequence" in refusal(dx).detail


def test_unknown_scheme_is_not_frontal(dx):
    dx.ViewCodeSequence = Sequence([_code("PA", "99VENDOR", "PA")])
    assert "View Code Sequence" in refusal(dx).detail


@pytest.mark.parametrize("modifier", [
    _code("111069", "DCM", "Crosstable"), _code("399196006", "SCT", "cephalad"),
    _code("272476000", "SCT", "transthoracic"),
])
def test_view_modifiers_are_refused(dx, modifier):
    dx.ViewCodeSequence = Sequence([_code("399348003", "SCT", "antero-posterior",
                                          ViewModifierCodeSequence=[modifier])])
    assert "View Modifier Code Sequence" in refusal(dx).detail


@pytest.mark.parametrize("modifier", [
    _code("102536004", "SCT", "left lateral decubitus"), _code("102535000", "SCT", "right lateral decubitus"),
    _code("32185000", "SCT", "lateral decubitus"), _code("260450008", "SCT", "lordotic"),
    _code("F-10319", "SRT", "left lateral decubitus"),
])
def test_decubitus_and_lordotic_orientations_are_refused(dx, modifier):
    dx.ViewPosition = "AP"
    dx.PatientOrientationCodeSequence = Sequence([_code("102538003", "SCT", "recumbent",
                                                        PatientOrientationModifierCodeSequence=[modifier])])
    assert "Patient Orientation Modifier Code Sequence" in refusal(dx).detail


@pytest.mark.parametrize("orientation,modifier", [
    (_code("102538003", "SCT", "recumbent"), _code("40199007", "SCT", "supine")),
    (_code("C86043", "NCIt", "erect"), _code("10904000", "SCT", "standing")),
    (_code("F-10440", "SRT", "erect"), _code("F-10340", "SRT", "supine")),
])
def test_erect_and_supine_frontal_films_pass(dx, orientation, modifier):
    dx.ViewPosition = "AP"
    orientation.PatientOrientationModifierCodeSequence = Sequence([modifier])
    dx.PatientOrientationCodeSequence = Sequence([orientation])
    check_header(dx)


def test_eponymous_projection_is_refused(dx):
    dx.ViewPosition = "AP"
    dx.ProjectionEponymousNameCodeSequence = Sequence([_code(codes.SCT.Fleischner.value, "SCT", codes.SCT.Fleischner.meaning)])
    assert "Projection Eponymous Name Code Sequence" in refusal(dx).detail


@pytest.mark.parametrize("text", ["CHEST LAT", "THORAX RAO", "CHEST OBLIQUE", "CHEST LLD DECUBITUS",
                                  "APICAL LORDOTIC", "thorax seitlich"])
def test_descriptions_decide_only_without_view_attributes(dx, text):
    dx.SeriesDescription = text
    assert "description" in refusal(dx).detail
    dx.ViewPosition = "PA"  # the attribute, when present, is what counts
    check_header(dx)


def test_description_naming_a_frontal_view_passes(dx):
    dx.SeriesDescription, dx.ProtocolName = "CHEST PA", "THORAX AP SUPINE"
    check_header(dx)
