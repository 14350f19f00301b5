"""The intended-use gate: each not-assessable reason triggers, and real chest films pass."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.sequence import Sequence

from cxr_triage.cli import main
from cxr_triage.contract.patient import parse_age_years
from cxr_triage.contract.result import NotAssessable
from cxr_triage.contract.result import NotAssessableReason as R
from cxr_triage.dicom_node.tools.film_to_dicom import png_to_dicom, write_dicom
from cxr_triage.inference.gate import GateSettings, check_film, check_header, patient_age_years
from cxr_triage.inference.reader import Film
from cxr_triage.paths import repo_root


@pytest.fixture(scope="module")
def png(shared_data: Path) -> Path:
    return sorted((shared_data / "nih-cxr14" / "images").glob("*.png"))[0]


@pytest.fixture
def chest(png: Path) -> Dataset:
    """An adult PA chest CR that passes the gate."""
    return png_to_dicom(png, sop_class="DX_PRES", bits_stored=12, patient_age="045Y")


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def refusal(ds: Dataset, settings: GateSettings = GateSettings()) -> R:
    with pytest.raises(NotAssessable) as exc:
        check_header(ds, settings)
    assert exc.value.detail  # every refusal says why in words
    return exc.value.reason


def test_adult_frontal_chest_passes(chest):
    check_header(chest)  # no exception
    chest.ViewPosition = "AP"
    chest.PatientAge = ""
    check_header(chest)


def test_real_samples(sample_dicoms):
    canine = dcmread(sample_dicoms["highdicom_dx_canine_thorax_mono1"])
    assert refusal(canine) is R.NON_HUMAN
    for name in ("siim_cr_chest_pa", "siim_cr_chest_pa_MONOCHROME1_variant", "nih_gcp_dx_chest_nofinding"):
        check_header(dcmread(sample_dicoms[name]))


def test_non_image_object(chest):
    sr = Dataset()
    sr.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    sr.Modality = "SR"
    assert refusal(sr) is R.NON_IMAGE


def test_unsupported_image_class(chest):
    chest.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT
    assert refusal(chest) is R.UNSUPPORTED_SOP_CLASS


def test_multi_frame(chest):
    chest.NumberOfFrames = 3
    assert refusal(chest) is R.MULTI_FRAME


def test_colour(chest):
    chest.PhotometricInterpretation = "RGB"
    chest.SamplesPerPixel = 3
    assert refusal(chest) is R.COLOR


@pytest.mark.parametrize("edit", [
    lambda ds: setattr(ds, "ViewPosition", "LL"),
    lambda ds: setattr(ds, "ViewPosition", "RL"),
    lambda ds: (setattr(ds, "ViewPosition", ""),
                setattr(ds, "ViewCodeSequence", Sequence([_code("399198007", "SCT", "right lateral")]))),
    lambda ds: (setattr(ds, "ViewPosition", ""), delattr(ds, "ViewCodeSequence"),
                setattr(ds, "SeriesDescription", "CHEST LAT")),
], ids=["LL", "RL", "view-code", "description"])
def test_lateral_view(chest, edit):
    edit(chest)
    assert refusal(chest) is R.LATERAL_VIEW


def test_non_chest_body_part(chest):
    chest.BodyPartExamined = "HAND"
    assert refusal(chest) is R.NON_CHEST
    chest.BodyPartExamined = ""
    chest.AnatomicRegionSequence = Sequence([_code("85562004", "SCT", "Hand")])
    assert refusal(chest) is R.NON_CHEST
    chest.BodyPartExamined = "THORAX"
    check_header(chest)


@pytest.mark.parametrize("age,refused", [("006M", True), ("010Y", True), ("015Y", True),
                                         ("016Y", False), ("045Y", False), ("", False)])
def test_paediatric_by_patient_age(chest, age, refused):
    chest.PatientAge = age
    if refused:
        assert refusal(chest) is R.PAEDIATRIC
    else:
        check_header(chest)


def test_paediatric_by_birth_date_and_configurable_minimum(chest):
    del chest.PatientAge
    chest.StudyDate, chest.PatientBirthDate = "20240301", "20140101"
    assert patient_age_years(chest) == pytest.approx(10.16, abs=0.01)
    assert refusal(chest) is R.PAEDIATRIC
    check_header(chest, GateSettings(min_age_years=5))


@pytest.mark.parametrize("text,years", [("045Y", 45.0), ("006M", 0.5), ("003W", 21 / 365.25),
                                        ("010D", 10 / 365.25), ("62", 62.0), ("abc", None), ("", None)])
def test_parse_age(text, years):
    got = parse_age_years(text)
    assert (got is None) if years is None else got == pytest.approx(years)


@pytest.mark.parametrize("edit", [
    lambda ds: setattr(ds, "PatientSpeciesDescription", "Canine"),
    lambda ds: setattr(ds, "PatientSpeciesCodeSequence",
                       Sequence([_code("448771007", "SCT", "Canis lupus familiaris")])),
    lambda ds: setattr(ds, "PatientBreedDescription", "Labrador"),
    lambda ds: setattr(ds, "AcquisitionDeviceProcessingDescription", "FELINE THORAX VD"),
], ids=["species-text", "species-code", "breed", "procedure-text"])
def test_non_human(chest, edit):
    edit(chest)
    assert refusal(chest) is R.NON_HUMAN


def test_human_species_passes(chest):
    chest.PatientSpeciesDescription = "Homo sapiens"
    chest.PatientSpeciesCodeSequence = Sequence([_code("337915000", "SCT", "Homo sapiens")])
    check_header(chest)


def test_too_small(png):
    small = png_to_dicom(np.full((200, 300), 0.5), sop_class="CR")
    assert refusal(small) is R.TOO_SMALL
    check_header(small, GateSettings(min_image_size=128))
    with pytest.raises(NotAssessable) as exc:
        check_film(Film(np.random.default_rng(0).random((100, 400), dtype=np.float32)))
    assert exc.value.reason is R.TOO_SMALL


def test_blank_film_is_undecodable():
    with pytest.raises(NotAssessable) as exc:
        check_film(Film(np.full((512, 512), 0.3, dtype=np.float32)))
    assert exc.value.reason is R.UNDECODABLE


def _conformance_reason_for_multi_frame_sc() -> str:
    """The reason docs/conformance.md gives multi-frame Secondary Capture classes."""
    text = (repo_root() / "docs" / "conformance.md").read_text()
    found = re.search(r"multi-frame SC classes [^:]*: `(\w+)`", text)
    assert found, "docs/conformance.md no longer names the multi-frame SC reason"
    return found.group(1)


@pytest.mark.parametrize("frames", [1, 2])
def test_multi_frame_secondary_capture_gets_the_documented_reason_from_predict(
        frames, chest, tiny_model, tmp_path, capsys, monkeypatch):
    """One decision on SOP classes (inference.gate.check_object): a Multi-frame Grayscale Word
    SC gets conformance.md's reason from ``predict``, with one frame or more."""
    sop_class = "1.2.840.10008.5.1.4.1.1.7.3"  # Multi-frame Grayscale Word Secondary Capture
    chest.SOPClassUID = chest.file_meta.MediaStorageSOPClassUID = sop_class
    chest.NumberOfFrames = frames
    if frames > 1:
        chest.PixelData = bytes(chest.PixelData) * frames
    path = write_dicom(chest, tmp_path / "multi_frame_sc.dcm")
    monkeypatch.setattr(sys, "argv", ["cxr-triage"])
    monkeypatch.delenv("CXR_TRIAGE_CONFIG", raising=False)
    assert main(["predict", "--json", "--model", str(tiny_model), str(path)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["decision"] == "not_assessable"
    assert result["reason"] == _conformance_reason_for_multi_frame_sc() == R.MULTI_FRAME.value


def test_the_node_worker_gives_the_gate_reason_for_a_multi_frame_secondary_capture(chest, tiny_model):
    """The worker decides nothing about SOP classes itself: a multi-frame SC instance scored by
    the worker gets the gate's reason, the same as from ``predict`` (issue 21)."""
    from cxr_triage.config import load_config
    from cxr_triage.dicom_node.store.jobs import InstanceRecord
    from cxr_triage.dicom_node.worker.stages import score_instance
    from cxr_triage.inference.pipeline import Triager

    sop_class = "1.2.840.10008.5.1.4.1.1.7.3"
    chest.SOPClassUID = chest.file_meta.MediaStorageSOPClassUID = sop_class
    chest.NumberOfFrames = 2
    chest.PixelData = bytes(chest.PixelData) * 2
    inst = InstanceRecord(sop_instance_uid=str(chest.SOPInstanceUID), study_uid=str(chest.StudyInstanceUID),
                          series_uid=str(chest.SeriesInstanceUID), sop_class_uid=sop_class,
                          transfer_syntax=str(chest.file_meta.TransferSyntaxUID), path="mf.dcm", size=None,
                          calling_ae=None, received_at=0.0)
    triager = Triager(load_config(None, environ={}), model_path=tiny_model, threads=1)
    film = score_instance(triager, inst, chest)
    assert film.reason is R.MULTI_FRAME == R(_conformance_reason_for_multi_frame_sc())
