"""The decoding plugins chosen in inference/decoders.py against pydicom's default decoding.

For every transfer syntax the project writes and every pixel configuration of a real NIH film,
:func:`decode_pixels` must give the stored values pydicom's default plugin order gives (a fresh
``dcmread(path).pixel_array``): exactly for lossless syntaxes, and for the lossy JPEG processes
within a stored value or two (libjpeg-turbo and libjpeg round the inverse DCT differently). A missing
or failing plugin falls back to the next one and then to pydicom's default order.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
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

from cxr_triage.dicom_node.tools.film_to_dicom import png_to_dicom, write_dicom
from cxr_triage.inference import decoders
from cxr_triage.inference.decoders import IMAGECODECS, PREFERRED, decode_pixels, preferred_plugins

LOSSLESS = [ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
            RLELossless, JPEGLosslessSV1, JPEGLossless, JPEGLSLossless, JPEG2000Lossless]
#: decoding is fully specified for these lossy syntaxes (JPEG-LS) or done by the same OpenJPEG
#: (JPEG 2000: imagecodecs against pydicom's default, pylibjpeg-openjpeg): exact too
LOSSY_EXACT = [JPEGLSNearLossless, JPEG2000]
#: lossy JPEG (DCT): at most this many stored values apart (of 256 / of 4096 for 12-bit)
LOSSY_DCT = {JPEGBaseline8Bit: 1, JPEGExtended12Bit: 2}

CONFIGS = {
    "u8": dict(bits_stored=8),
    "u12": dict(bits_stored=12),
    "u16": dict(bits_stored=16),
    "s16": dict(bits_stored=16, signed=True, rescale_slope=0.5, rescale_intercept=-100.0),
}


def _supported(tsyntax: str, config: dict) -> bool:
    bits, signed = config["bits_stored"], config.get("signed", False)
    if tsyntax == JPEGBaseline8Bit:
        return bits == 8
    if tsyntax == JPEGExtended12Bit:
        return bits <= 12
    if tsyntax == JPEGLSNearLossless:  # pyjpegls encodes no lossy signed 16-bit
        return not (signed and bits == 16)
    return True


CASES = [
    pytest.param(ts, name, id=f"{ts.name}-{name}")
    for ts in [*LOSSLESS, *LOSSY_EXACT, *LOSSY_DCT]
    for name, cfg in CONFIGS.items()
    if _supported(ts, cfg)
]


@pytest.fixture(scope="module")
def png(shared_data: Path) -> Path:
    return sorted((shared_data / "nih-cxr14" / "images").glob("*.png"))[0]


@pytest.fixture(scope="module")
def files(png: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    out = tmp_path_factory.mktemp("decoders")
    made = {}
    for param in CASES:
        ts, name = param.values
        ds = png_to_dicom(png, sop_class="CR", transfer_syntax_uid=ts, **CONFIGS[name])
        made[(ts, name)] = write_dicom(ds, out / f"{ts}-{name}.dcm")
    return made


def _default(path: Path) -> np.ndarray:
    """pydicom's default decoding: its own plugin order, on a fresh dataset."""
    return pydicom.dcmread(path).pixel_array


@pytest.mark.parametrize("tsyntax,config", CASES)
def test_chosen_plugin_matches_pydicom_default(tsyntax, config, files):
    path = files[(tsyntax, config)]
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == tsyntax
    got, ref = decode_pixels(ds), _default(path)
    assert got.shape == ref.shape == (int(ds.Rows), int(ds.Columns))
    assert got.dtype == ref.dtype
    if tsyntax in LOSSY_DCT:
        diff = np.abs(got.astype(np.int64) - ref.astype(np.int64))
        assert diff.max() <= LOSSY_DCT[tsyntax], diff.max()
        assert diff.mean() < 0.1, diff.mean()
    else:
        np.testing.assert_array_equal(got, ref)


def test_every_chosen_plugin_is_installed():
    """The worker's dependencies bring every plugin of the table (imagecodecs from Python 3.11)."""
    for ts, names in PREFERRED.items():
        expected = tuple(n for n in names if n != IMAGECODECS or sys.version_info >= (3, 11))
        assert preferred_plugins(ts) == expected, ts.name


def _record_plugins(monkeypatch) -> list[str]:
    """Spy on which plugin decode_pixels asks pydicom for."""
    used: list[str] = []
    real = decoders.pixel_array

    def spy(ds, *, decoding_plugin=""):
        used.append(decoding_plugin)
        return real(ds, decoding_plugin=decoding_plugin)

    monkeypatch.setattr(decoders, "pixel_array", spy)
    return used


def test_the_first_chosen_plugin_decodes(files, monkeypatch):
    used = _record_plugins(monkeypatch)
    for ts in (JPEGLosslessSV1, JPEGLSLossless, RLELossless):
        decode_pixels(pydicom.dcmread(files[(ts, "u16")]))
    assert used == [PREFERRED[JPEGLosslessSV1][0], PREFERRED[JPEGLSLossless][0], PREFERRED[RLELossless][0]]


def test_uninstalled_plugin_is_skipped(files, monkeypatch):
    """imagecodecs missing (e.g. Python 3.10): the next plugin of the table, same values."""
    decoder = get_decoder(JPEGLossless)
    monkeypatch.setattr(decoder, "_available",
                        {k: v for k, v in decoder._available.items() if k != IMAGECODECS})
    monkeypatch.setitem(sys.modules, "imagecodecs", None)  # import imagecodecs -> ImportError
    assert not decoders.is_available(JPEGLossless)
    assert IMAGECODECS not in preferred_plugins(JPEGLossless)
    used = _record_plugins(monkeypatch)
    path = files[(JPEGLossless, "s16")]
    np.testing.assert_array_equal(decode_pixels(pydicom.dcmread(path)), _default(path))
    assert used == ["pylibjpeg"]


@pytest.mark.parametrize("codec,tsyntax", [("jpeg8_decode", JPEGLosslessSV1), ("jpeg2k_decode", JPEG2000Lossless),
                                           ("jpeg2k_decode", JPEG2000)])
def test_failing_plugin_falls_back_to_the_next(codec, tsyntax, files, monkeypatch):
    """imagecodecs failing (JPEG or JPEG 2000): pylibjpeg decodes, same values."""
    import imagecodecs

    def broken(*args, **kwargs):
        raise RuntimeError("simulated decoder failure")

    monkeypatch.setattr(imagecodecs, codec, broken)
    used = _record_plugins(monkeypatch)
    path = files[(tsyntax, "u12")]
    np.testing.assert_array_equal(decode_pixels(pydicom.dcmread(path)), _default(path))
    assert used == [IMAGECODECS, "pylibjpeg"]


def test_jpeg_2000_is_decoded_by_imagecodecs_on_threads(files, monkeypatch):
    """The first choice for JPEG 2000 is imagecodecs' OpenJPEG with J2K_THREADS threads, and
    pydicom's default order (the reference of the value checks above) is another plugin."""
    import imagecodecs

    threads: list[int] = []
    real = imagecodecs.jpeg2k_decode

    def spy(src, **kwargs):
        threads.append(kwargs.get("numthreads"))
        return real(src, **kwargs)

    monkeypatch.setattr(imagecodecs, "jpeg2k_decode", spy)
    used = _record_plugins(monkeypatch)
    for ts in (JPEG2000Lossless, JPEG2000):
        decode_pixels(pydicom.dcmread(files[(ts, "s16")]))
    assert used == [IMAGECODECS, IMAGECODECS] and threads == [decoders.J2K_THREADS] * 2
    assert next(iter(get_decoder(JPEG2000Lossless)._available)) != IMAGECODECS


def test_every_chosen_plugin_failing_falls_back_to_pydicom_default(files, monkeypatch):
    calls: list[str] = []

    def failing(ds, *, decoding_plugin=""):
        calls.append(decoding_plugin)
        raise RuntimeError("simulated plugin failure")

    monkeypatch.setattr(decoders, "pixel_array", failing)
    for ts in (JPEGBaseline8Bit, JPEGLSNearLossless, JPEG2000Lossless):
        calls.clear()
        path = files[(ts, "u8")]
        ds = pydicom.dcmread(path)
        np.testing.assert_array_equal(decode_pixels(ds), _default(path))
        assert calls == list(preferred_plugins(ts))


def test_table_without_installed_plugin_uses_pydicom_default(files, monkeypatch):
    monkeypatch.setitem(decoders.PREFERRED, RLELossless, ("no-such-plugin",))
    assert preferred_plugins(RLELossless) == ()
    path = files[(RLELossless, "s16")]
    np.testing.assert_array_equal(decode_pixels(pydicom.dcmread(path)), _default(path))


def test_undecodable_data_raises_pydicom_error(files):
    ds = pydicom.dcmread(files[(JPEGLosslessSV1, "u16")])
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xc3" + b"\x00" * 64 + b"\xff\xd9"])
    with pytest.raises(Exception):  # noqa: B017 - pydicom's own error, whatever it is
        decode_pixels(ds)


def test_colour_jpeg_is_left_to_pydicom_plugins(monkeypatch):
    """The libjpeg-turbo plugin decodes greyscale only: a colour frame goes to the next plugin."""
    yy, xx = np.mgrid[0:64, 0:48]
    rgb = np.stack([yy * 4, xx * 5, (yy + xx) * 2], axis=-1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buf, format="JPEG", quality=95, subsampling=0)
    ds = png_to_dicom(np.zeros((64, 48)), sop_class="CR", transfer_syntax_uid=ExplicitVRLittleEndian,
                      bits_stored=8)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "YBR_FULL", 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    used = _record_plugins(monkeypatch)
    got = decode_pixels(ds)
    assert used == [IMAGECODECS, "pillow"]
    ref = pydicom.pixels.pixel_array(ds)  # pydicom's default order
    assert got.shape == ref.shape == (64, 48, 3)
    diff = np.abs(got.astype(int) - ref.astype(int))  # IDCT and YCbCr->RGB rounding
    assert diff.max() <= 4 and diff.mean() < 0.5, (diff.max(), diff.mean())
    assert np.abs(got.astype(int) - rgb.astype(int)).mean() < 2
