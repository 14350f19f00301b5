"""Issue 23 classes 4 and 7 at the reader: padding after a JPEG end-of-image marker is ignored
(the film decodes to the same pixels as without it, as dcmtk does), while a codestream with
part of its data overwritten, cut, or followed by non-padding bytes is refused as undecodable
with the reason, whatever a decoder would return. The same films through ``predict`` and the
node: tests/reliability/test_reliability_film_faults.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from pydicom import uid as U
from pydicom.encaps import encapsulate, generate_frames
from support.film_faults import corrupt_jpeg, nih_film, padded_jpeg

from cxr_triage.contract.result import NotAssessable, NotAssessableReason
from cxr_triage.dicom_node.tools.film_to_dicom import png_to_dicom
from cxr_triage.inference import decoders
from cxr_triage.inference.codestreams import CodestreamError, inspect_frame
from cxr_triage.inference.reader import read_film

JPEG_FAMILY = [U.JPEGBaseline8Bit, U.JPEGExtended12Bit, U.JPEGLossless, U.JPEGLosslessSV1,
               U.JPEGLSLossless, U.JPEGLSNearLossless]


@pytest.fixture(scope="module")
def png(shared_data):
    return nih_film(shared_data)


def _bits(ts: str) -> int:
    return 8 if ts == U.JPEGBaseline8Bit else 12


@pytest.mark.parametrize("ts", JPEG_FAMILY)
@pytest.mark.parametrize("pad,fill", [(64, 0x00), (32, 0x00), (2, 0x00), (1001, 0x00), (16, 0xFF)])
def test_padding_after_end_of_image_is_ignored(png, ts, pad, fill):
    intact = read_film(png_to_dicom(png, transfer_syntax_uid=ts, bits_stored=_bits(ts))).pixels
    padded = read_film(padded_jpeg(png, ts, pad, fill)).pixels
    np.testing.assert_array_equal(padded, intact)


@pytest.mark.parametrize("ts", JPEG_FAMILY)
@pytest.mark.parametrize("seed,at,size", [(0, 0.6, 40_000), (1, 0.3, 40_000), (2, 0.9, 4_000),
                                          (3, 0.5, 400)])
def test_overwritten_codestream_is_undecodable(png, ts, seed, at, size):
    for pad in (0, 64):  # corruption with trailing padding too: 4 and 7 meet
        with pytest.raises(NotAssessable) as err:
            read_film(corrupt_jpeg(png, ts, size=size, at=at, seed=seed, pad=pad))
        assert err.value.reason is NotAssessableReason.UNDECODABLE
        assert "corrupt" in err.value.detail


@pytest.mark.parametrize("ts", JPEG_FAMILY)
def test_cut_codestream_and_bytes_after_eoi_are_refused(png, ts):
    ds = png_to_dicom(png, transfer_syntax_uid=ts, bits_stored=_bits(ts))
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    eoi = frame.rindex(b"\xff\xd9")
    for bad in (frame[:len(frame) // 2], frame[:eoi], frame[:eoi + 2] + b"\x12\x34" + b"\0" * 30,
                frame[:eoi + 2] + frame[2:200]):
        ds.PixelData = encapsulate([bad])
        with pytest.raises(NotAssessable) as err:
            read_film(ds)
        assert err.value.reason is NotAssessableReason.UNDECODABLE


def test_the_walk_reads_the_frame_size_and_end():
    film = png_to_dicom(np.tile(np.arange(300, dtype=np.uint16), (260, 1)),
                        transfer_syntax_uid=U.JPEGLosslessSV1, bits_stored=12)
    frame = next(generate_frames(film.PixelData, number_of_frames=1))
    info = inspect_frame(frame + b"\0" * 10, jpeg_ls=False)
    assert (info.rows, info.cols) == (260, 300)
    assert frame[:info.end].endswith(b"\xff\xd9") and info.end <= len(frame)
    with pytest.raises(CodestreamError):
        inspect_frame(b"\x00" * 100, jpeg_ls=False)


def test_a_codec_error_is_final_whatever_the_next_plugin_returns(png, monkeypatch):
    """The decoder's own error about the data (imagecodecs: ``Unsupported marker type``) is a
    verdict on the film: pylibjpeg would return a film with a smeared band from the same stream
    (the issue's 0.791 'suspicious'). The codestream walk is bypassed here to reach the decoder."""
    from cxr_triage.inference import reader

    ds = corrupt_jpeg(png, U.JPEGLosslessSV1, seed=0)
    monkeypatch.setattr(reader, "frame_check", lambda ds: reader.FrameCheck(None, None))
    with pytest.raises(decoders.CorruptPixelStream, match="Jpeg8Error"):
        decoders.decode_pixels(ds)
    with pytest.raises(NotAssessable) as err:
        read_film(ds)
    assert err.value.reason is NotAssessableReason.UNDECODABLE and "Jpeg8Error" in err.value.detail
