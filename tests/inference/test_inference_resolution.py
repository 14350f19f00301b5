"""JPEG 2000 / HTJ2K read at a reduced resolution (issue 21; inference/resolution.py), and
JPEG 2000 codestreams cut or overwritten mid-stream refused as undecodable
(codestreams.check_j2k_frame). The reduced films here come from a 512 px NIH film with a small
floor; bench/decode_reduced.py measures the bundled model's scores on detector-sized films."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom import uid as U
from pydicom.encaps import encapsulate, generate_frames
from support.film_faults import htj2k, nih_film

from cxr_triage.contract.result import NotAssessable, NotAssessableReason
from cxr_triage.dicom_node.tools.film_to_dicom import png_to_dicom
from cxr_triage.inference import resolution
from cxr_triage.inference.codestreams import CodestreamError, check_j2k_frame, j2k_header
from cxr_triage.inference.reader import read_film

#: a floor a 512 x 512 film meets with one level left out (256 x 256), not with two
SMALL_FLOOR = (200, 256)


@pytest.fixture(scope="module")
def png(shared_data):
    return nih_film(shared_data)


def _frame(ds) -> bytes:
    return next(generate_frames(ds.PixelData, number_of_frames=1))


def _box2(pixels: np.ndarray) -> np.ndarray:
    h, w = pixels.shape
    return pixels[:h // 2 * 2, :w // 2 * 2].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))


@pytest.mark.parametrize("ts,bits", [(U.JPEG2000Lossless, 16), (U.JPEG2000Lossless, 12),
                                     (U.JPEG2000, 16), (U.HTJ2KLossless, 12)])
def test_a_reduced_film_is_the_full_film_at_half_size(png, ts, bits):
    ds = htj2k(png, ts) if ts == U.HTJ2KLossless else png_to_dicom(png, transfer_syntax_uid=ts, bits_stored=bits)
    full = read_film(ds)
    reduced = read_film(ds, floor=SMALL_FLOOR)
    assert full.reduction == 0 and reduced.reduction == 1
    assert reduced.pixels.shape == (256, 256) and reduced.pixels.dtype == np.float32
    # the low-pass band of the wavelet, through the same Modality LUT and VOI: a 2 x 2 mean
    # of the full film but for the wavelet's sharper filter at edges
    diff = np.abs(reduced.pixels - _box2(full.pixels))
    assert diff.mean() < 0.01 and np.corrcoef(reduced.pixels.ravel(), _box2(full.pixels).ravel())[0, 1] > 0.99


def test_odd_sides_round_up(png):
    ds = png_to_dicom(png, transfer_syntax_uid=U.JPEG2000Lossless, bits_stored=16)
    stored = ds.pixel_array[:511, :509]
    ds = png_to_dicom(stored, transfer_syntax_uid=U.JPEG2000Lossless, bits_stored=16)
    film = read_film(ds, floor=SMALL_FLOOR)
    assert film.reduction == 1 and film.pixels.shape == (256, 255)


def test_films_that_are_not_reduced(png):
    lossless = png_to_dicom(png, transfer_syntax_uid=U.JPEG2000Lossless, bits_stored=16)
    assert read_film(lossless).reduction == 0  # no floor: full resolution
    assert read_film(lossless, floor=(300, 300)).pixels.shape == (512, 512)  # below the floor
    padded = png_to_dicom(png, transfer_syntax_uid=U.JPEG2000Lossless, bits_stored=16, pixel_padding=0,
                          padding_border=8)
    assert read_film(padded, floor=SMALL_FLOOR).reduction == 0  # padding would smear
    signed = png_to_dicom(png, transfer_syntax_uid=U.JPEG2000Lossless, bits_stored=16, signed=True)
    assert read_film(signed, floor=SMALL_FLOOR).reduction == 0
    native = png_to_dicom(png, bits_stored=16)
    assert read_film(native, floor=SMALL_FLOOR).pixels.shape == (512, 512)


def test_a_failed_reduced_decode_falls_back_to_the_full_film(png, monkeypatch):
    ds = png_to_dicom(png, transfer_syntax_uid=U.JPEG2000Lossless, bits_stored=16)

    def broken(frame, level, precision):
        raise OSError("broken data stream")

    monkeypatch.setattr(resolution, "_pillow_decode", broken)
    film = read_film(ds, floor=SMALL_FLOOR)
    assert film.reduction == 0
    np.testing.assert_array_equal(film.pixels, read_film(ds).pixels)


@pytest.mark.parametrize("rows,cols,levels,level", [(2500, 2048, 5, 1), (2048, 2048, 5, 1), (4280, 3520, 5, 2),
                                                    (4280, 3520, 1, 1), (1024, 1024, 5, 0), (2500, 2048, 0, 0)])
def test_reduction_level_keeps_the_worker_floor(rows, cols, levels, level):
    assert resolution.reduction_level(rows, cols, levels, resolution.WORKER_FLOOR) == level


def test_main_header(png):
    ds = png_to_dicom(png, transfer_syntax_uid=U.JPEG2000Lossless, bits_stored=12)
    header = j2k_header(_frame(ds))
    assert header is not None
    assert (header.rows, header.cols, header.components, header.signed, header.precision) == (512, 512, 1, False, 12)
    assert header.origin_zero and header.levels is not None and header.levels >= 1


@pytest.mark.parametrize("ts", [U.JPEG2000Lossless, U.JPEG2000])
@pytest.mark.parametrize("floor", [None, SMALL_FLOOR])
def test_a_cut_or_overwritten_j2k_frame_is_undecodable(png, ts, floor):
    ds = png_to_dicom(png, transfer_syntax_uid=ts, bits_stored=16)
    frame = _frame(ds)
    at = len(frame) // 3
    overwritten = frame[:at] + np.random.default_rng(1).bytes(4000) + frame[at + 4000:]
    for bad in (frame[:len(frame) // 2], overwritten):
        ds.PixelData = encapsulate([bad])
        with pytest.raises(NotAssessable) as err:
            read_film(ds, floor=floor)
        assert err.value.reason is NotAssessableReason.UNDECODABLE
        assert "corrupt or truncated" in err.value.detail


def test_check_j2k_frame(png):
    frame = _frame(png_to_dicom(png, transfer_syntax_uid=U.JPEG2000Lossless, bits_stored=16))
    check_j2k_frame(frame)
    check_j2k_frame(frame + b"\x00")  # the fragment's even-length padding
    for bad, says in ((frame[:-2], "truncated"), (frame + b"\x12\x34", "not padding"),
                      (frame[:400] + b"\xff\xa0" + frame[402:], "0xFFA0")):
        with pytest.raises(CodestreamError, match=says):
            check_j2k_frame(bad)


@pytest.mark.parametrize("bits", [8, 10, 12, 15, 16])
def test_pillows_stored_values_are_pydicoms(png, bits):
    """Pillow's OpenJPEG at full resolution gives pydicom's stored values (9 to 15-bit samples
    shifted back from Pillow's 16-bit mode)."""
    ds = png_to_dicom(png, transfer_syntax_uid=U.JPEG2000Lossless, bits_stored=bits)
    np.testing.assert_array_equal(resolution._pillow_decode(_frame(ds), 0, bits), ds.pixel_array)


def test_the_worker_decodes_jpeg_2000_reduced_only_when_configured(png, tiny_model):
    """``[inference] j2k_reduced_resolution``: off (the default) the Triager decodes the whole
    film; on, a 2048 px JPEG 2000 film is decoded one level down (1024 px, the worker floor's
    longer side) and scored from that."""
    from cxr_triage.config import load_config
    from cxr_triage.inference.pipeline import Triager

    base = png_to_dicom(png, transfer_syntax_uid=U.JPEG2000Lossless, bits_stored=12).pixel_array
    big = np.kron(base[:512, :512], np.ones((4, 4), dtype=base.dtype))        # 2048 x 2048
    ds = png_to_dicom(big, transfer_syntax_uid=U.JPEG2000Lossless, bits_stored=12)
    cfg = load_config(None, environ={})
    assert cfg.inference.j2k_reduced_resolution is False
    shapes, scores = [], []
    for on in (False, True):
        triager = Triager(cfg.replace(inference={"model_path": str(tiny_model), "threads": 1,
                                                 "j2k_reduced_resolution": on}), keep_pixels=True)
        result = triager.triage_dataset(ds)
        assert result.pixels is not None and result.score is not None
        shapes.append(result.pixels.shape)
        scores.append(result.score)
    assert shapes == [(2048, 2048), (1024, 1024)]
    assert abs(scores[0] - scores[1]) < 0.05
