"""Issue 15 (reader part): vendor header quirks decode as dcmtk decodes them, and no film, however
broken, raises anything but :class:`NotAssessable` out of the reader.

The oracle is dcmtk's ``dcm2pnm`` (support/dcmtk_oracle.py): our display pixels must equal its
output up to a positive affine map and rounding, for every quirk kind handled here. Films are
real NIH films wrapped with made-up patient details (support/quirk_films.py).
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom import Dataset, dcmread
from pydicom.dataelem import RawDataElement
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import ImplicitVRLittleEndian
from support.dcmtk_oracle import assert_like_dcmtk, dcmtk_display
from support.quirk_films import PATIENT, voi_lut_film, window_film

from cxr_triage.cli import main
from cxr_triage.contract.result import Decision, NotAssessable, NotAssessableReason
from cxr_triage.dicom_node.tools.film_to_dicom import film_to_stored, load_film_image, png_to_dicom, write_dicom
from cxr_triage.inference import reader
from cxr_triage.inference.gate import check_film, check_header
from cxr_triage.inference.reader import read_film

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR")


@pytest.fixture(scope="module")
def pngs(shared_data: Path) -> list[Path]:
    return sorted((shared_data / "nih-cxr14" / "images").glob("*.png"))[:4]


@pytest.fixture(scope="module")
def png(pngs: list[Path]) -> Path:
    return pngs[0]


def _undecodable(fn) -> NotAssessable:
    with pytest.raises(NotAssessable) as exc:
        fn()
    assert exc.value.reason is NotAssessableReason.UNDECODABLE, exc.value
    return exc.value


# ----------------------------------------------------------------------------- case 1: VOI LUT descriptor

def test_issue15_case1_ss_encoded_voi_lut_descriptor_decodes_like_dcmtk(png, tmp_path):
    """16-bit unsigned DX, VOI LUT Descriptor [4096, 32768, 16] encoded as SS (reads -32768):
    pydicom's VOI step raised OverflowError out of the reader; dcmtk reads the first value
    mapped as US (Pixel Representation 0) and renders it."""
    path = write_dicom(voi_lut_film(png, first=32768, count=4096, descriptor_vr="SS"), tmp_path / "case1.dcm")
    on_disk = dcmread(path)
    assert on_disk["VOILUTSequence"][0]["LUTDescriptor"].VR == "SS"
    assert list(on_disk.VOILUTSequence[0].LUTDescriptor) == [4096, -32768, 16]  # the quirk is in the file
    film = read_film(path)
    check_film(film)
    assert_like_dcmtk(film.pixels, dcmtk_display(path, "+Wl", "1"))


#: LUT descriptor / data quirk kinds (PS3.3 C.11.2.1.1 as dcmtk's DiLookupTable reads it)
LUT_QUIRKS = {
    # same film with the DX rescale 1/0: the first value is still US (range not negative)
    "ss-first-value-with-identity-rescale": dict(first=32768, count=4096, descriptor_vr="SS", rescale=(1.0, 0.0)),
    # first entry count 0 means 65536 entries
    "count-0-means-65536": dict(first=0, count=65536),
    # signed pixels: the first value mapped is SS even when encoded US (63488 -> -2048)
    "signed-pixels-first-value-encoded-us": dict(first=-2048, count=4096, bits_stored=12, signed=True),
    "signed-pixels-first-value-encoded-ss": dict(first=-2048, count=4096, bits_stored=12, signed=True,
                                                 descriptor_vr="SS"),
    # unsigned pixels rescaled into a negative range: SS (C.11.2.1.1), though encoded US
    "rescaled-negative-range-first-value-ss": dict(first=-1024, count=4096, bits_stored=12,
                                                   rescale=(1.0, -1024.0)),
    # LUT Data holds fewer entries than the descriptor says: the data wins (dcmtk)
    "data-shorter-than-descriptor": dict(first=0, count=4096, data_entries=2048, bits_stored=12,
                                         stored_span=(0, 4095)),
    # 8-bit entries, two to a 16-bit word (8 bits allocated)
    "8-bit-entries-packed": dict(first=0, count=4096, lut_bits=8, packed_8bit=True, bits_stored=12),
    # 8-bit entries, one per word
    "8-bit-entries-in-words": dict(first=0, count=4096, lut_bits=8, bits_stored=12),
    # LUT Data with VR US instead of OW
    "lut-data-as-us": dict(first=0, count=4096, data_vr="US", bits_stored=12),
}


@pytest.mark.parametrize("quirk", list(LUT_QUIRKS))
def test_voi_lut_quirk_decodes_like_dcmtk(quirk, png, tmp_path):
    path = write_dicom(voi_lut_film(png, **LUT_QUIRKS[quirk]), tmp_path / f"{quirk}.dcm")
    film = read_film(path)
    check_film(film)
    assert_like_dcmtk(film.pixels, dcmtk_display(path, "+Wl", "1"))


def test_ss_descriptor_in_implicit_vr_decodes_like_dcmtk(png, tmp_path):
    ds = voi_lut_film(png, first=32768, count=4096, descriptor_vr="SS")
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    path = write_dicom(ds, tmp_path / "implicit.dcm")
    explicit = read_film(write_dicom(voi_lut_film(png, first=32768, count=4096), tmp_path / "us.dcm")).pixels
    got = read_film(path).pixels
    np.testing.assert_array_equal(got, explicit)
    assert_like_dcmtk(got, dcmtk_display(path, "+Wl", "1"))


def test_descriptor_as_unresolved_bytes_reads_as_words(png):
    """A dataset whose ambiguous VRs were never resolved holds the descriptor as raw bytes."""
    ds = voi_lut_film(png, first=32768, count=4096, descriptor_vr="SS")
    expected = read_film(ds).pixels
    item = ds.VOILUTSequence[0]
    item.add_new(0x00283002, "OB", struct.pack("<3H", 4096, 32768, 16))
    np.testing.assert_array_equal(read_film(ds).pixels, expected)


# ----------------------------------------------------------------------------- case 2: windows

def test_issue15_case2_negative_rescale_slope_window_is_not_blank(png, tmp_path):
    """CR, Rescale Slope -10, Intercept 3000, Window 1725/2560: was refused as "blank (a single
    intensity)" because the window's output ends came back in reverse order."""
    ds = window_film(png, center=1725, width=2560, slope=-10, intercept=3000, bits_stored=8)
    path = write_dicom(ds, tmp_path / "case2.dcm")
    film = read_film(path)
    check_film(film)  # not blank
    assert film.pixels.max() - film.pixels.min() > 0.5
    assert_like_dcmtk(film.pixels, dcmtk_display(path, "+Wi", "1"))


#: rescale (slope, intercept, bits stored) kinds, each with a window that clips both ends
RESCALES = {"identity": (1.0, 0.0, 12), "negative-slope": (-10.0, 3000.0, 12), "fractional": (0.5, -100.0, 12),
            "negative-fractional": (-0.25, 0.0, 14)}


def _clipping_window(slope: float, intercept: float, bits: int) -> tuple[float, float]:
    lo, hi = sorted((intercept, ((1 << bits) - 1) * slope + intercept))
    return lo + 0.55 * (hi - lo), 0.6 * (hi - lo)


@pytest.mark.parametrize("rescale", list(RESCALES))
@pytest.mark.parametrize("function", [None, "LINEAR", "LINEAR_EXACT", "SIGMOID"])
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_window_functions_and_rescale_signs_decode_like_dcmtk(rescale, function, photometric, png, tmp_path):
    """PS3.3 C.11.2.1.2 / C.11.2.1.3 for either sign of the slope. dcmtk 3.6.7 reads LINEAR and
    SIGMOID from the file and takes LINEAR_EXACT as LINEAR (within 1/width of each other)."""
    slope, intercept, bits = RESCALES[rescale]
    center, width = _clipping_window(slope, intercept, bits)
    ds = window_film(png, center=center, width=width, function=function, slope=slope, intercept=intercept,
                     bits_stored=bits, photometric=photometric)
    path = write_dicom(ds, tmp_path / "w.dcm")
    film = read_film(path)
    check_film(film)
    assert_like_dcmtk(film.pixels, dcmtk_display(path, "+Wi", "1"))
    if function != "SIGMOID":
        assert (film.pixels == 0).mean() > 0.005 and (film.pixels == 1).mean() > 0.005  # it clips


@pytest.mark.parametrize("rescale", list(RESCALES))
def test_linear_exact_follows_the_standard(rescale, png, tmp_path):
    """LINEAR_EXACT (C.11.2.1.3.2): y = (x - c) / w + 0.5 clipped, c and w as given."""
    slope, intercept, bits = RESCALES[rescale]
    center, width = _clipping_window(slope, intercept, bits)
    ds = window_film(png, center=center, width=width, function="LINEAR_EXACT", slope=slope,
                     intercept=intercept, bits_stored=bits)
    got = read_film(write_dicom(ds, tmp_path / "le.dcm")).pixels
    stored = film_to_stored(load_film_image(png), bits, False, "MONOCHROME2").astype(np.float64)
    expected = np.clip((stored * slope + intercept - center) / width + 0.5, 0.0, 1.0)
    np.testing.assert_allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("slope,intercept", [(-10.0, 3000.0), (-1.0, 0.0)])
def test_negative_slope_without_voi_uses_the_film_range_like_dcmtk(slope, intercept, png, tmp_path):
    ds = png_to_dicom(png, sop_class="DX_PROC", bits_stored=12, rescale_slope=slope,
                      rescale_intercept=intercept, window=None, **PATIENT)
    path = write_dicom(ds, tmp_path / "noVOI.dcm")
    film = read_film(path)
    check_film(film)
    assert_like_dcmtk(film.pixels, dcmtk_display(path, "+Wm"))


# ----------------------------------------------------------------------------- coded strings

@pytest.mark.parametrize("photometric", ["monochrome1", "MONOCHROME1\x00", " Monochrome1 "])
def test_coded_strings_are_normalised_alike_in_gate_and_decoder(photometric, png):
    """Case and padding of CS values: one normalisation (dicom_values.coded_string) in both."""
    plain = png_to_dicom(png, sop_class="DX_PRES", bits_stored=12, photometric="MONOCHROME1", **PATIENT)
    odd = png_to_dicom(png, sop_class="DX_PRES", bits_stored=12, photometric="MONOCHROME1", **PATIENT)
    odd.PhotometricInterpretation = photometric
    odd.PresentationLUTShape = "inverse\x00"
    check_header(odd)  # not refused as colour
    np.testing.assert_array_equal(read_film(odd).pixels, read_film(plain).pixels)


def test_voi_lut_function_is_normalised(png):
    ds = window_film(png, center=2000.0, width=1500.0, function="SIGMOID")
    sigmoid = read_film(ds).pixels
    ds.VOILUTFunction = "sigmoid\x00"
    np.testing.assert_array_equal(read_film(ds).pixels, sigmoid)
    ds.VOILUTFunction = "LINEAR"
    assert not np.array_equal(read_film(ds).pixels, sigmoid)


# ----------------------------------------------------------------------------- no film aborts a batch

#: (reader function to break, exception it raises): every stage of reading one film
FAILURES = [
    ("_display_values", OverflowError("Python integer -32768 out of bounds for uint16")),
    ("_display_values", struct.error("unpack_from requires a buffer of 8192 bytes")),
    ("padding_mask", ZeroDivisionError("division by zero")),
    ("apply_window", FloatingPointError("overflow encountered in exp")),
    ("voi_lut", RuntimeError("a library bug")),
    ("check_decodable_size", MemoryError("cannot allocate")),
]


@pytest.mark.parametrize("target,error", FAILURES, ids=[f"{t}-{type(e).__name__}" for t, e in FAILURES])
def test_any_exception_while_decoding_a_film_is_undecodable(target, error, png, monkeypatch, tmp_path):
    ds = window_film(png, center=2000.0, width=1500.0)
    path = write_dicom(ds, tmp_path / "f.dcm")

    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(reader, target, broken)
    for source in (path, dcmread(path)):
        exc = _undecodable(lambda source=source: read_film(source))
        assert type(error).__name__ in exc.detail


def test_any_exception_while_reading_a_png_is_undecodable(png, monkeypatch):
    def broken(*args, **kwargs):
        raise struct.error("bad chunk")

    monkeypatch.setattr(reader, "read_image_file", broken)
    assert "error" in _undecodable(lambda: read_film(png)).detail


def _predict(folder: Path, model: Path, capsys, monkeypatch) -> tuple[int, dict[str, dict]]:
    monkeypatch.setattr(sys, "argv", ["cxr-triage"])
    monkeypatch.delenv("CXR_TRIAGE_CONFIG", raising=False)
    rc = main(["predict", str(folder), "--json", "--model", str(model)])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    return rc, {Path(d["source"]).name: d for d in lines}


def test_issue15_case1_predict_on_a_folder_reports_every_film(pngs, tiny_model, tmp_path, capsys, monkeypatch):
    """`cxr-triage predict --json DIR` exited 1 with no result for any file."""
    write_dicom(voi_lut_film(pngs[0], first=32768, count=4096, descriptor_vr="SS"), tmp_path / "a_case1.dcm")
    shutil.copy(pngs[1], tmp_path / "b.png")
    write_dicom(png_to_dicom(pngs[2], sop_class="CR", **PATIENT), tmp_path / "c.dcm")
    rc, results = _predict(tmp_path, tiny_model, capsys, monkeypatch)
    assert rc == 0 and set(results) == {"a_case1.dcm", "b.png", "c.dcm"}
    assert all(r["decision"] in ("likely_normal", "suspicious") for r in results.values()), results


def test_a_film_raising_anything_neither_stops_a_batch_nor_a_worker(pngs, tiny_model, tmp_path, capsys, monkeypatch):
    boom = png_to_dicom(pngs[0], sop_class="CR", **{**PATIENT, "patient_id": "QRK-BOOM"})
    write_dicom(boom, tmp_path / "boom.dcm")
    for i, p in enumerate(pngs[1:3]):
        write_dicom(png_to_dicom(p, sop_class="CR", **PATIENT), tmp_path / f"ok{i}.dcm")
    original = reader._display_values

    def sometimes_broken(stored: np.ndarray, ds: Dataset):
        if ds.PatientID == "QRK-BOOM":
            raise OverflowError("Python integer -32768 out of bounds for uint16")
        return original(stored, ds)

    monkeypatch.setattr(reader, "_display_values", sometimes_broken)
    rc, results = _predict(tmp_path, tiny_model, capsys, monkeypatch)
    assert rc == 0 and set(results) == {"boom.dcm", "ok0.dcm", "ok1.dcm"}
    assert results["boom.dcm"]["reason"] == "undecodable" and "OverflowError" in results["boom.dcm"]["reason_detail"]
    assert results["ok0.dcm"]["score"] is not None and results["ok1.dcm"]["score"] is not None

    # the worker's path: one received dataset
    from cxr_triage.config import load_config
    from cxr_triage.inference.pipeline import Triager

    triager = Triager(load_config(None, environ={}).replace(inference={"model_path": str(tiny_model), "threads": 1}))
    result = triager.triage_dataset(boom, source="received")
    assert result.decision is Decision.NOT_ASSESSABLE and result.reason is NotAssessableReason.UNDECODABLE


# ----------------------------------------------------------------------------- bounded fuzz of the LUT steps

@pytest.fixture(scope="module")
def small_seed(png: Path) -> bytes:
    small = np.asarray(Image.open(png).convert("L").resize((96, 96)))
    ds = png_to_dicom(small, sop_class="DX_PRES", bits_stored=12, **PATIENT)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


_WORD = st.integers(0, 65535)
_DS = st.sampled_from(["0", "1", "-1", "-10", "0.5", "-0.001", "3000", "-32768", "1e308", "-1e308", "nan", "inf",
                       "1e-300", "4096", "abc", ""])


@st.composite
def lut_mutation(draw: st.DrawFn) -> dict:
    return dict(
        descriptor=[draw(_WORD) for _ in range(draw(st.integers(1, 4)))],
        descriptor_vr=draw(st.sampled_from(["US", "SS", "OB"])),
        data=draw(st.one_of(st.binary(max_size=400), st.lists(_WORD, max_size=200))),
        where=draw(st.sampled_from(["VOILUTSequence", "ModalityLUTSequence", "none"])),
        window=(draw(_DS), draw(_DS)),
        function=draw(st.sampled_from([None, "LINEAR", "LINEAR_EXACT", "SIGMOID", "sigmoid ", "CUBIC", ""])),
        rescale=(draw(_DS), draw(_DS)),
        pixel_representation=draw(st.sampled_from([0, 1])),
    )


def _apply(ds: Dataset, m: dict) -> None:
    ds.PixelRepresentation = m["pixel_representation"]
    if m["where"] != "none":
        item = Dataset()
        words = m["descriptor"]
        if m["descriptor_vr"] == "OB":
            item.add_new(0x00283002, "OB", struct.pack(f"<{len(words)}H", *words))
        elif m["descriptor_vr"] == "SS":
            item.add_new(0x00283002, "SS", [w - 65536 if w >= 32768 else w for w in words])
        else:
            item.add_new(0x00283002, "US", words)
        data = m["data"]
        item.add_new(0x00283006, "OW" if isinstance(data, bytes) else "US", data)
        setattr(ds, m["where"], Sequence([item]))
    # as a file holds them: raw bytes, converted (or not) only when read
    values = {0x00281050: m["window"][0], 0x00281051: m["window"][1],
              0x00281053: m["rescale"][0], 0x00281052: m["rescale"][1]}
    if m["function"] is not None:
        values[0x00281056] = m["function"]
    for tag, text in values.items():
        raw = text.encode() + b" " * (len(text) % 2)
        vr = "CS" if tag == 0x00281056 else "DS"
        ds._dict[Tag(tag)] = RawDataElement(Tag(tag), vr, len(raw), raw, 0, False, True)


def test_lut_and_window_fuzz(small_seed: bytes) -> None:
    """Whatever the Modality/VOI LUT, window, function and rescale say: a film in [0, 1] or
    NotAssessable, from a file and from a dataset alike."""

    @settings(max_examples=150, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(m=lut_mutation())
    def check(m: dict) -> None:
        ds = dcmread(io.BytesIO(small_seed))
        _apply(ds, m)
        buf = io.BytesIO()
        try:
            ds.save_as(buf, enforce_file_format=True)
        except Exception:  # noqa: BLE001 - a value pydicom cannot even write: nothing to read
            assume(False)
        for source in (dcmread(io.BytesIO(buf.getvalue())), ds):
            try:
                film = read_film(source)
            except NotAssessable as exc:
                assert exc.reason is not None
            else:
                px = film.pixels
                assert px.dtype == np.float32 and np.isfinite(px).all() and 0.0 <= px.min() <= px.max() <= 1.0

    check()
