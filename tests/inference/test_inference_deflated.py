"""``dcmread_bounded``: a Deflated Explicit VR Little Endian data set (PS3.5 A.5) is inflated once,
in bounded pieces (before, ``check_inflated_size`` inflated it to count and pydicom again to
read), reads as pydicom reads it, and is refused past the limit or when cut short."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from cxr_triage.inference.deflated import DeflateBomb, dcmread_bounded


@pytest.fixture
def deflated(tmp_path: Path) -> Path:
    from cxr_triage.dicom_node.tools.film_to_dicom import png_to_dicom, write_dicom

    film = (np.random.default_rng(5).random((96, 80)) * 4095).astype(np.uint16)
    return write_dicom(png_to_dicom(film, transfer_syntax_uid=DeflatedExplicitVRLittleEndian), tmp_path / "d.dcm")


def test_reads_as_pydicom_does_inflating_once(deflated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    whole = pydicom.dcmread(deflated)
    monkeypatch.setattr(zlib, "decompress", lambda *a, **k: pytest.fail("inflated a second time"))
    ds = dcmread_bounded(deflated)
    assert ds == whole and ds.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    assert ds.filename == str(deflated) and np.array_equal(ds.pixel_array, whole.pixel_array)
    header = dcmread_bounded(deflated, stop_before_pixels=True, defer_size="256 KB",
                             specific_tags=["SOPInstanceUID"])
    assert header.SOPInstanceUID == whole.SOPInstanceUID and "PixelData" not in header


def test_refuses_a_bomb_and_a_stream_cut_short(deflated: Path, tmp_path: Path) -> None:
    with pytest.raises(DeflateBomb):
        dcmread_bounded(deflated, limit=1000)
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(deflated.read_bytes()[: deflated.stat().st_size // 2])
    with pytest.raises(ValueError, match="incomplete or truncated stream"):
        dcmread_bounded(cut)


def test_other_syntaxes_are_pydicoms_own_read(tmp_path: Path) -> None:
    from cxr_triage.dicom_node.tools.film_to_dicom import png_to_dicom, write_dicom

    film = (np.random.default_rng(6).random((32, 32)) * 4095).astype(np.uint16)
    path = write_dicom(png_to_dicom(film, transfer_syntax_uid=ExplicitVRLittleEndian), tmp_path / "e.dcm")
    assert dcmread_bounded(path) == pydicom.dcmread(path)


def test_a_data_set_too_large_to_keep_is_read_by_pydicom(deflated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cxr_triage.inference import deflated as module

    monkeypatch.setattr(module, "KEEP_INFLATED_BYTES", 1000)
    assert dcmread_bounded(deflated) == pydicom.dcmread(deflated)
