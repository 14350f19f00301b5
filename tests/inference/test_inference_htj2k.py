"""HTJ2K (issue 26; PS3.5 A.4.11, ISO/IEC 15444-15): films encoded by imagecodecs (OpenJPH) in
the three HTJ2K syntaxes decode through the imagecodecs plugin with OpenJPEG, to the same values
as pylibjpeg-openjpeg (pydicom's own plugin), signed and unsigned; a cut or overwritten frame is
undecodable (OpenJPH, faster, would return a partial film from both: it is not used). Through ``predict`` and the node:
tests/reliability/test_reliability_film_faults.py (class ``htj2k``)."""

from __future__ import annotations

import imagecodecs
import numpy as np
import pytest
from pydicom import uid as U
from pydicom.encaps import encapsulate
from pydicom.pixels import pixel_array
from support.film_faults import htj2k, nih_film

from cxr_triage.contract.result import NotAssessable, NotAssessableReason
from cxr_triage.dicom_node.tools.film_to_dicom import png_to_dicom
from cxr_triage.inference import decoders
from cxr_triage.inference.reader import read_film

HTJ2K_SYNTAXES = [U.HTJ2KLossless, U.HTJ2KLosslessRPCL, U.HTJ2K]


@pytest.fixture(scope="module")
def png(shared_data):
    return nih_film(shared_data)


@pytest.mark.parametrize("ts", HTJ2K_SYNTAXES)
def test_htj2k_decodes_like_pydicoms_own_plugin(png, ts, monkeypatch):
    ds = htj2k(png, ts)
    calls = []
    real = imagecodecs.jpeg2k_decode
    monkeypatch.setattr(imagecodecs, "jpeg2k_decode", lambda src, **kw: calls.append(kw) or real(src, **kw))
    got = decoders.decode_pixels(ds)
    assert calls == [{"numthreads": decoders.J2K_THREADS}], "OpenJPEG was not used"
    np.testing.assert_array_equal(got, pixel_array(ds, decoding_plugin="pylibjpeg"))
    film = read_film(ds)
    native = read_film(png_to_dicom(png, transfer_syntax_uid=U.ExplicitVRLittleEndian, bits_stored=12))
    np.testing.assert_array_equal(film.pixels, native.pixels)


def test_signed_htj2k(png):
    ds = png_to_dicom(png, transfer_syntax_uid=U.ExplicitVRLittleEndian, bits_stored=12, signed=True)
    stored = ds.pixel_array
    ds.PixelData = encapsulate([imagecodecs.htj2k_encode(stored, reversible=True)])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = U.HTJ2KLossless
    np.testing.assert_array_equal(decoders.decode_pixels(ds), stored)


@pytest.mark.parametrize("seed", range(4))
def test_a_cut_or_overwritten_htj2k_frame_is_undecodable(png, seed):
    ds = htj2k(png)
    frame = bytearray(imagecodecs.htj2k_encode(ds.pixel_array, reversible=True))
    at, size = len(frame) * (2 + seed) // 10, (400, 4000, 20000, 40000)[seed]
    overwritten = bytes(frame)
    overwritten = overwritten[:at] + np.random.default_rng(seed).bytes(size) + overwritten[at + size:]
    for bad in (bytes(frame[:len(frame) * (5 + seed) // 10]), overwritten):
        ds.PixelData = encapsulate([bad])
        with pytest.raises(NotAssessable) as err:
            read_film(ds)
        assert err.value.reason is NotAssessableReason.UNDECODABLE
