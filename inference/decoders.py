"""Which pixel-data decoding plugin decodes which transfer syntax: the one place that says so.

pydicom tries its plugins in a fixed order (GDCM, pylibjpeg, Pillow, pyjpegls...) and keeps the
first that succeeds; that order is not the fastest one. :data:`PREFERRED` names, per transfer
syntax, the plugins to try in order, measured on a 2500 x 2048 detector film (bench/decode.py's
film; CPU ms per decode through ``pydicom.pixels.pixel_array(ds, decoding_plugin=...)``, median
of 5 on the shared 2-core EPYC; dcmtk = its decompressor's CPU plus reading its output, the
benchmark's reference). GDCM (python-gdcm 3.2.6) was measured and is fastest for none, so it
is not a dependency.
:func:`decode_pixels` decodes with the first of them that is installed and succeeds, and falls
back to pydicom's own order (``ds.pixel_array``) when none is installed or all fail, so a missing
package costs speed, never a film.

pydicom has no plugin for libjpeg-turbo's 12- and 16-bit JPEG (libjpeg-turbo 3 decodes lossless
and 12-bit JPEG; Pillow only 8-bit), which is what makes JPEG Lossless fast, nor one that runs
OpenJPEG on several threads, which is what makes JPEG 2000 fast (pylibjpeg-openjpeg and Pillow
decode a frame on one): this module is that plugin (``"imagecodecs"``: imagecodecs'
``jpeg8_decode`` for JPEG, ``jpeg2k_decode`` with :data:`J2K_THREADS` threads for JPEG 2000
and HTJ2K), registered with pydicom's JPEG, JPEG 2000 and HTJ2K decoders on import (pydicom's decoder plugin
interface: ``is_available``, ``DECODER_DEPENDENCIES``, ``_decode_frame``). It decodes greyscale
frames only; colour frames fall through to the next plugin.

The stored values are the same as pydicom's default decoding: exactly for the lossless syntaxes
and for JPEG 2000 lossy (the same OpenJPEG inverse wavelet as pylibjpeg-openjpeg) and JPEG-LS
near-lossless (decoding fully specified), within one stored value for JPEG Baseline and two (of
4096) for 12-bit JPEG Extended (libjpeg-turbo and libjpeg round the inverse DCT differently), as
tests/inference/test_inference_decoders.py checks for every syntax.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from typing import cast

import numpy as np
from pydicom import Dataset
from pydicom import uid as U
from pydicom.pixels import get_decoder, pixel_array
from pydicom.pixels.decoders.base import DecodeRunner

LOG = logging.getLogger(__name__)

#: the label of this module's plugin in pydicom's JPEG decoders
IMAGECODECS = "imagecodecs"

#: transfer syntax -> plugins to try, fastest first (ms: CPU per decode, see the module docstring)
PREFERRED: dict[str, tuple[str, ...]] = {
    # pylibjpeg-rle 46 ms; pydicom's numpy RLE 940; dcmtk dcmdrle 115
    U.RLELossless: ("pylibjpeg",),
    # imagecodecs (libjpeg-turbo) 17 ms; Pillow (libjpeg-turbo, the same values) 25;
    # pylibjpeg-libjpeg 89 (3% of pixels 1 stored value apart); GDCM 171; dcmtk dcmdjpeg 82
    U.JPEGBaseline8Bit: (IMAGECODECS, "pillow", "pylibjpeg"),
    # imagecodecs (libjpeg-turbo 12-bit) 50 ms; pylibjpeg-libjpeg 141 (5% of pixels 1 apart);
    # GDCM and Pillow refuse 12-bit; dcmtk dcmdjpeg 130
    U.JPEGExtended12Bit: (IMAGECODECS, "pylibjpeg"),
    # imagecodecs (libjpeg-turbo lossless) 67 ms; pylibjpeg-libjpeg 347; GDCM 413;
    # dcmtk dcmdjpeg 169
    U.JPEGLossless: (IMAGECODECS, "pylibjpeg"),
    # imagecodecs 69 ms; pylibjpeg-libjpeg 334; GDCM 370; dcmtk dcmdjpeg 161
    U.JPEGLosslessSV1: (IMAGECODECS, "pylibjpeg"),
    # pyjpegls (CharLS) 198 ms; GDCM 418; pylibjpeg-libjpeg 687; dcmtk dcmdjpls 423
    U.JPEGLSLossless: ("pyjpegls", "pylibjpeg"),
    # pyjpegls 183 ms; GDCM 403; pylibjpeg-libjpeg 632; dcmtk dcmdjpls 375
    U.JPEGLSNearLossless: ("pyjpegls", "pylibjpeg"),
    # lossless: imagecodecs (OpenJPEG 2.5.4, 2 threads) ~220 ms wall, pylibjpeg-openjpeg (one
    # thread) ~450 (issue 21, a quiet machine); under load average 3 on the 2 cores, wall ms
    # (min of 7) lossless / lossy: imagecodecs 785 / 479, pylibjpeg-openjpeg 926 / 922; CPU ms
    # in the first measurement: pylibjpeg-openjpeg 1024 / 516, Pillow (openjpeg) 1010 / 576,
    # GDCM 1287 / 814; dcmtk has no JPEG 2000 codec. Same values (exact): pylibjpeg is the fallback
    U.JPEG2000Lossless: (IMAGECODECS, "pylibjpeg"),
    U.JPEG2000: (IMAGECODECS, "pylibjpeg"),
    # HTJ2K (PS3.5 A.4.11): imagecodecs' OpenJPEG 2.5 on 2 threads 144 ms (one thread 215),
    # then pylibjpeg-openjpeg. imagecodecs' OpenJPH (htj2k_decode) takes 40 ms for the same
    # values but swallows its errors on a corrupt or cut stream ("Exception ignored ... ojph
    # error") and returns a partial film, where OpenJPEG raises: it is not used (issue 23.7)
    U.HTJ2KLossless: (IMAGECODECS, "pylibjpeg"),
    U.HTJ2KLosslessRPCL: (IMAGECODECS, "pylibjpeg"),
    U.HTJ2K: (IMAGECODECS, "pylibjpeg"),
}

#: the syntaxes this module's libjpeg-turbo path decodes (ISO 10918-1 processes 1, 2/4, 14)
_JPEG_SYNTAXES = (U.JPEGBaseline8Bit, U.JPEGExtended12Bit, U.JPEGLossless, U.JPEGLosslessSV1)
#: the syntaxes its OpenJPEG path decodes (ISO 15444-1, PS3.5 A.4.4; HTJ2K: 15444-15, A.4.11)
_J2K_SYNTAXES = (U.JPEG2000Lossless, U.JPEG2000, U.HTJ2KLossless, U.HTJ2KLosslessRPCL, U.HTJ2K)
#: OpenJPEG threads per JPEG 2000 frame: a 2500 x 2048 lossless film decodes in about half the
#: time on 2 threads; more gave nothing on the 2-core machine the node runs on
J2K_THREADS = 2

#: the codec errors of imagecodecs' decoders (checked by name: imagecodecs is imported lazily)
_CODEC_ERRORS = ("Jpeg8Error", "Jpeg2kError", "Htj2kError")
#: what other plugins' codecs say of a corrupt stream (pydicom passes the message on):
#: CharLS (pyjpegls), OpenJPEG (pylibjpeg-openjpeg)
_CODEC_PHRASES = ("Invalid JPEG-LS stream", "Error decoding the J2K data")
#: what this thread's codecs said about the pixel stream during :func:`decode_pixels`
_STREAM_ERRORS: ContextVar[list[str] | None] = ContextVar("stream_errors", default=None)


class CorruptPixelStream(RuntimeError):
    """A codec found the pixel stream corrupt (its message), whatever another plugin returned."""


#: pydicom's plugin interface: what the plugin needs, per syntax, when it is unavailable
DECODER_DEPENDENCIES = {ts: ("numpy", "imagecodecs>=2024.1") for ts in (*_JPEG_SYNTAXES, *_J2K_SYNTAXES)}


def is_available(uid: str) -> bool:
    """pydicom's plugin interface: True if imagecodecs is installed with the codec of ``uid``'s
    syntax (libjpeg-turbo 3 for JPEG, OpenJPEG for JPEG 2000)."""
    if uid not in _JPEG_SYNTAXES and uid not in _J2K_SYNTAXES:
        return False
    try:
        import imagecodecs
    except ImportError:
        return False
    codec = imagecodecs.JPEG8 if uid in _JPEG_SYNTAXES else imagecodecs.JPEG2K
    return bool(codec.available)


def _decode_frame(src: bytes, runner: DecodeRunner) -> bytes | bytearray:
    """pydicom's plugin interface: one JPEG or JPEG 2000 frame -> its samples, native byte order.

    Raises NotImplementedError for colour frames (pydicom then tries its next plugin) and
    ValueError for a decoded array that is not one 2-D frame of 8 to 32-bit integers.
    """
    import imagecodecs

    if runner.samples_per_pixel != 1:
        # colour transforms stay with the plugins pydicom ships (its `raw` and YBR handling)
        raise NotImplementedError("the imagecodecs plugin decodes greyscale frames only")
    try:
        if runner.transfer_syntax in _J2K_SYNTAXES:
            # signed codestreams come back as signed integers of the same width: the same bytes
            # as pylibjpeg-openjpeg's, and pydicom applies its J2K sign correction to both alike
            arr = imagecodecs.jpeg2k_decode(src, numthreads=J2K_THREADS)
        else:
            arr = imagecodecs.jpeg8_decode(src)
    except Exception as exc:
        _note_stream_error(exc)
        raise
    if arr.ndim != 2 or arr.dtype.kind not in "ui" or arr.dtype.itemsize > 4:
        raise ValueError(f"imagecodecs decoded a {arr.dtype} frame of shape {arr.shape}")
    # the container follows the codestream's precision (8-bit JPEG in 16-bit Bits Allocated
    # comes back as uint8), as pydicom's other JPEG and JPEG 2000 plugins report it
    runner.set_option("bits_allocated", 8 * arr.dtype.itemsize)
    # pydicom reads the frame with np.frombuffer and copies it into its own array: a flat byte
    # view of the decoded array saves a copy of the frame (tobytes) on the way
    return cast(bytes, arr.reshape(-1).view(np.uint8).data)


def _note_stream_error(exc: Exception) -> None:
    """Keep a codec's own error about the data for :func:`decode_pixels` (pydicom logs it and
    tries its next plugin, which may return a film from the same corrupt stream)."""
    errors = _STREAM_ERRORS.get()
    if errors is not None and type(exc).__name__ in _CODEC_ERRORS:
        errors.append(f"{type(exc).__name__}: {exc}")


def _named_stream_errors(message: str) -> list[str]:
    """The lines of a pydicom decoding error that are a codec's verdict on the data."""
    return [line.strip() for line in message.splitlines() if any(p in line for p in _CODEC_PHRASES)]


def _register() -> None:
    for ts in (*_JPEG_SYNTAXES, *_J2K_SYNTAXES):
        try:
            get_decoder(ts).add_plugin(IMAGECODECS, (__name__, "_decode_frame"))
        except ValueError:  # already registered (this module imported under a second name)
            pass


_register()


def preferred_plugins(transfer_syntax: str) -> tuple[str, ...]:
    """The plugins :func:`decode_pixels` tries for ``transfer_syntax``, installed ones only."""
    names = PREFERRED.get(transfer_syntax, ())
    if not names:
        return ()
    available = get_decoder(transfer_syntax).available_plugins
    return tuple(name for name in names if name in available)


def decode_pixels(ds: Dataset) -> np.ndarray:
    """The stored values of ``ds``'s Pixel Data, in the decoder's native dtype.

    Decoded with the first plugin of :data:`PREFERRED` that is installed and succeeds, else
    with pydicom's default order (``ds.pixel_array``), whose exception is the one raised when
    every plugin fails. Native (uncompressed) syntaxes need no plugin and go to pydicom as they
    are. The array is not cached on ``ds`` (``ds.pixel_array`` would keep a copy of it alive
    for as long as the dataset).

    Raises :class:`CorruptPixelStream` when a codec (libjpeg-turbo, OpenJPEG) refused the data
    itself (``Unsupported marker type``, a corrupt code-block...): another plugin would often
    return a film from the same stream with part of it filled in, which must not be scored. A
    plugin that fails otherwise (missing, colour, an internal error) still falls back.
    """
    file_meta = getattr(ds, "file_meta", None)
    tsyntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    errors: list[str] = []
    token = _STREAM_ERRORS.set(errors)
    try:
        for name in preferred_plugins(tsyntax) if tsyntax else ():
            try:
                return pixel_array(ds, decoding_plugin=name)
            except Exception as exc:  # a plugin fails with anything; the next may succeed
                errors.extend(_named_stream_errors(str(exc)))
                if errors:
                    raise CorruptPixelStream(errors[0]) from exc
                LOG.debug("decoding plugin %s failed on %s (%s: %s); trying the next",
                          name, tsyntax, type(exc).__name__, exc)
    finally:
        _STREAM_ERRORS.reset(token)
    return ds.pixel_array
