"""The reader against generated DICOM variants of a real NIH film.

Every transfer syntax x pixel configuration must decode to what the uncompressed Explicit VR
file of the same configuration decodes to: exactly for lossless syntaxes, within a stated
tolerance for lossy ones. The uncompressed references are in turn checked against the PNG
through independent oracles (inversion, rescale + window, VOI LUT Sequence, padding).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from cxr_triage.contract.result import NotAssessable, NotAssessableReason
from cxr_triage.dicom_node.tools.film_to_dicom import (
    _sigmoid_voi_lut,
    film_to_stored,
    load_film_image,
    png_to_dicom,
    write_dicom,
)
from cxr_triage.inference.reader import read_film

LOSSLESS = [ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
            RLELossless, JPEGLSLossless, JPEG2000Lossless, JPEGLosslessSV1, JPEGLossless]
#: lossy syntax -> (max mean |error|, max |error|) on the [0, 1] film
LOSSY_TOLERANCE = {
    JPEGBaseline8Bit: (0.01, 0.08),     # Pillow quality 95, 8-bit
    JPEGExtended12Bit: (0.01, 0.08),    # dcmcjpeg quality 95
    JPEG2000: (0.002, 0.02),            # openjpeg at PSNR 80 dB
    JPEGLSNearLossless: (0.01, 0.02),   # NEAR = 2 stored values; 8-bit films are min-max stretched
}

# pixel configurations: 8-bit plain; 12-bit MONOCHROME1 with a window; signed 16-bit with
# rescale and a window; 12-bit with a VOI LUT Sequence and collimation padding
CONFIGS = {
    "u8_mono2": dict(bits_stored=8),
    "u12_mono1_window": dict(bits_stored=12, photometric="MONOCHROME1", window="full"),
    "s16_rescale_window": dict(bits_stored=16, signed=True, rescale_slope=0.5,
                               rescale_intercept=-100.0, window="full"),
    "u12_voilut_padding": dict(bits_stored=12, voi_lut_sequence=True, pixel_padding=0,
                               padding_border=6),
}


def _supported(tsyntax: str, config: dict) -> bool:
    bits, signed = config.get("bits_stored", 12), config.get("signed", False)
    if tsyntax == JPEGBaseline8Bit:
        return bits == 8 and not signed
    if tsyntax == JPEGExtended12Bit:
        return bits <= 12 and not signed
    if tsyntax == JPEGLSNearLossless:  # pyjpegls: no lossy signed 16-bit
        return not (signed and bits == 16)
    return True


CASES = [
    pytest.param(ts, name, id=f"{ts.name}-{name}")
    for ts in [*LOSSLESS, *LOSSY_TOLERANCE]
    for name, cfg in CONFIGS.items()
    if _supported(ts, cfg)
]


@pytest.fixture(scope="module")
def png(shared_data: Path) -> Path:
    return sorted((shared_data / "nih-cxr14" / "images").glob("*.png"))[0]


@pytest.fixture(scope="module")
def film(png: Path) -> np.ndarray:
    return load_film_image(png)


@pytest.fixture(scope="module")
def references(png: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    out = tmp_path_factory.mktemp("ref")
    refs = {}
    for name, cfg in CONFIGS.items():
        ds = png_to_dicom(png, sop_class="CR", transfer_syntax_uid=ExplicitVRLittleEndian, **cfg)
        refs[name] = read_film(write_dicom(ds, out / f"{name}.dcm")).pixels
    return refs


@pytest.mark.parametrize("tsyntax,config", CASES)
def test_variant_decodes_to_uncompressed_reference(tsyntax, config, png, references, tmp_path):
    ds = png_to_dicom(png, sop_class="CR", transfer_syntax_uid=tsyntax, **CONFIGS[config])
    path = write_dicom(ds, tmp_path / "variant.dcm")
    decoded = read_film(path)
    assert decoded.dataset is not None
    assert decoded.dataset.file_meta.TransferSyntaxUID == tsyntax
    ref = references[config]
    assert decoded.pixels.dtype == np.float32 and decoded.pixels.shape == ref.shape
    if tsyntax in LOSSY_TOLERANCE:
        mean_tol, max_tol = LOSSY_TOLERANCE[tsyntax]
        err = np.abs(decoded.pixels - ref)
        assert err.mean() <= mean_tol and err.max() <= max_tol, (err.mean(), err.max())
    else:
        np.testing.assert_array_equal(decoded.pixels, ref)


def test_plain_8bit_is_the_png_stretched_to_full_range(references, film):
    expected = (film - film.min()) / (film.max() - film.min())
    np.testing.assert_allclose(references["u8_mono2"], expected, atol=1e-6)


def test_monochrome1_is_inverted_back(png, film, tmp_path):
    mono1 = read_film(write_dicom(png_to_dicom(png, bits_stored=12, photometric="MONOCHROME1",
                                               sop_class="CR"), tmp_path / "m1.dcm"))
    mono2 = read_film(write_dicom(png_to_dicom(png, bits_stored=12, sop_class="CR"),
                                  tmp_path / "m2.dcm"))
    # bright bone stays bright: both equal the film up to one 12-bit step
    np.testing.assert_allclose(mono1.pixels, mono2.pixels, atol=1.5 / 4095)
    assert np.corrcoef(mono1.pixels.ravel(), film.ravel())[0, 1] > 0.999


def test_signed_rescale_and_full_window_recover_the_film(references, film):
    # a window over the whole modality range is the identity on [0, 1]
    np.testing.assert_allclose(references["s16_rescale_window"], film, atol=2e-5)
    np.testing.assert_allclose(references["u12_mono1_window"], film, atol=1.5 / 4095)


def test_narrow_window_follows_the_linear_voi_function(png, film, tmp_path):
    center, width = 1500.0, 1200.0
    ds = png_to_dicom(png, sop_class="CR", bits_stored=12, window=(center, width))
    got = read_film(write_dicom(ds, tmp_path / "w.dcm")).pixels
    stored = film_to_stored(film, 12, False, "MONOCHROME2").astype(np.float64)
    # PS3.3 C.11.2.1.2.1, output rescaled to [0, 1]
    expected = np.clip((stored - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert (got == 0).mean() > 0.01 and (got == 1).mean() > 0.01  # the window really clips


def test_voi_lut_sequence_is_applied_and_padding_masked(references, film):
    got = references["u12_voilut_padding"]
    stored = film_to_stored(film, 12, False, "MONOCHROME2")
    lut = _sigmoid_voi_lut(0, 4096).astype(np.float64)
    expected = lut[stored] / lut.max()
    inner = (slice(6, -6), slice(6, -6))
    np.testing.assert_allclose(got[inner], expected[inner], atol=1e-6)
    # the padded frame is black, and nothing inside it is mistaken for padding unless stored 0
    assert (got[:6, :] == 0).all() and (got[:, -6:] == 0).all()


def test_padding_is_left_out_of_the_intensity_range(png, film, tmp_path):
    ds = png_to_dicom(png, sop_class="DX_PRES", bits_stored=12, photometric="MONOCHROME1",
                      window=None, pixel_padding=4095, padding_border=10)
    got = read_film(write_dicom(ds, tmp_path / "p.dcm"))
    assert got.padding_mask is not None and got.padding_mask[:10, :].all()
    inner = film[10:-10, 10:-10]
    expected = (inner - inner.min()) / (inner.max() - inner.min())
    np.testing.assert_allclose(got.pixels[10:-10, 10:-10], expected, atol=1.5 / 4095)
    assert (got.pixels[:10, :] == 0).all()


def test_signed_padding_value_in_implicit_vr(png, tmp_path):
    ds = png_to_dicom(png, sop_class="CR", bits_stored=14, signed=True, pixel_padding=-8192,
                      padding_border=4, transfer_syntax_uid=ImplicitVRLittleEndian)
    got = read_film(write_dicom(ds, tmp_path / "s.dcm"))
    assert got.padding_mask is not None and got.padding_mask[:4, :].all()
    assert (got.pixels[:4, :] == 0).all() and got.pixels[4:-4, 4:-4].max() == 1.0


def test_real_samples_decode(sample_dicoms):
    siim = read_film(sample_dicoms["siim_cr_chest_pa"]).pixels
    variant = read_film(sample_dicoms["siim_cr_chest_pa_MONOCHROME1_variant"]).pixels
    # the variant stores the same values labelled MONOCHROME1: it displays as the negative
    np.testing.assert_allclose(variant, 1.0 - siim, atol=1e-6)
    nih = read_film(sample_dicoms["nih_gcp_dx_chest_nofinding"]).pixels
    assert nih.shape == (1024, 1024) and 0.0 <= nih.min() < nih.max() <= 1.0


# ----------------------------------------------------------------------------- PNG / JPEG

def test_png_8bit_16bit_and_grey_rgb(png, film, tmp_path):
    np.testing.assert_allclose(read_film(png).pixels, film, atol=1e-6)
    sixteen = tmp_path / "f16.png"
    Image.fromarray((film * 65535).round().astype(np.uint16)).save(sixteen)
    np.testing.assert_allclose(read_film(sixteen).pixels, film, atol=1e-5)
    rgb = tmp_path / "rgb.png"
    Image.fromarray((film * 255).round().astype(np.uint8)).convert("RGB").save(rgb)
    np.testing.assert_allclose(read_film(rgb).pixels, film, atol=1e-6)
    jpg = tmp_path / "f.jpg"
    Image.fromarray((film * 255).round().astype(np.uint8)).save(jpg, quality=95)
    assert np.abs(read_film(jpg).pixels - film).mean() < 0.01


def test_colour_picture_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "colour.png"
    Image.fromarray(rng.integers(0, 255, (300, 300, 3), dtype=np.uint8)).save(path)
    with pytest.raises(NotAssessable) as exc:
        read_film(path)
    assert exc.value.reason is NotAssessableReason.COLOR


# ----------------------------------------------------------------------------- refusals

def _reason(fn) -> NotAssessableReason:
    with pytest.raises(NotAssessable) as exc:
        fn()
    return exc.value.reason


def test_decompression_bomb_is_refused_before_decoding(png, tmp_path):
    ds = png_to_dicom(png, sop_class="CR", transfer_syntax_uid=JPEGLSLossless)
    assert _reason(lambda: read_film(ds, max_pixels=512 * 511)) is NotAssessableReason.UNDECODABLE
    # a header claiming a huge image (the default limit), pixel data never touched
    ds.Rows = ds.Columns = 60000
    with pytest.raises(NotAssessable, match="limit"):
        read_film(ds)
    big = tmp_path / "big.png"
    Image.new("L", (2000, 2000)).save(big)
    with pytest.raises(NotAssessable, match="limit"):
        read_film(big, max_pixels=1_000_000)


def test_codestream_larger_than_header_is_refused(png):
    for tsyntax in (JPEGLSLossless, JPEG2000Lossless, JPEGLosslessSV1):
        ds = png_to_dicom(png, sop_class="CR", transfer_syntax_uid=tsyntax)
        ds.Rows = ds.Columns = 256
        with pytest.raises(NotAssessable, match="compressed frame is 512x512"):
            read_film(ds)


def test_corrupt_and_foreign_data_is_undecodable(png, tmp_path):
    ds = png_to_dicom(png, sop_class="CR", bits_stored=12)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]  # truncated native data
    assert _reason(lambda: read_film(ds)) is NotAssessableReason.UNDECODABLE

    jp = png_to_dicom(png, sop_class="CR", transfer_syntax_uid=JPEG2000Lossless)
    from pydicom.encaps import encapsulate, generate_frames

    frame = next(generate_frames(jp.PixelData, number_of_frames=1))
    jp.PixelData = encapsulate([frame[:200] + b"\x00" * 500])  # header intact, data garbage
    assert _reason(lambda: read_film(jp)) is NotAssessableReason.UNDECODABLE

    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"this is not a DICOM file" * 20)
    assert _reason(lambda: read_film(junk)) is NotAssessableReason.UNDECODABLE
    fake_png = tmp_path / "fake.png"
    fake_png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    assert _reason(lambda: read_film(fake_png)) is NotAssessableReason.UNDECODABLE


def test_missing_pixel_data_and_colour_dicom(png):
    ds = png_to_dicom(png, sop_class="CR")
    del ds.PixelData
    assert _reason(lambda: read_film(ds)) is NotAssessableReason.NON_IMAGE
    ds = png_to_dicom(png, sop_class="CR")
    ds.PhotometricInterpretation = "PALETTE COLOR"
    assert _reason(lambda: read_film(ds)) is NotAssessableReason.COLOR


def test_unusable_window_falls_back_to_min_max(png, film, tmp_path):
    ds = png_to_dicom(png, sop_class="CR", bits_stored=8, window=(100.0, 50.0))
    ds.WindowWidth = "0"
    got = read_film(write_dicom(ds, tmp_path / "w0.dcm")).pixels
    np.testing.assert_allclose(got, (film - film.min()) / (film.max() - film.min()), atol=1e-6)


@pytest.mark.parametrize("syntax", [pydicom.uid.ExplicitVRLittleEndian, pydicom.uid.RLELossless, pydicom.uid.JPEGLSLossless])
def test_png_to_dicom_keeps_the_given_sop_instance_uid(shared_data, syntax):
    from cxr_triage.dicom_node.tools.film_to_dicom import png_to_dicom

    png = sorted((shared_data / "nih-cxr14" / "images").glob("*.png"))[0]
    ds = png_to_dicom(png, sop_instance_uid="1.2.826.0.1.3680043.10.511.99.1", transfer_syntax_uid=syntax)
    assert ds.SOPInstanceUID == "1.2.826.0.1.3680043.10.511.99.1"
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
