"""Decode: films/s per transfer syntax, the project's reader vs dcmtk as the reference.

The same real film (upscaled to 2500 x 2048, 16-bit; 8-bit for JPEG Baseline, 12-bit for
JPEG Extended) is encoded once per syntax with ``png_to_dicom``. Timed per film, alternating:
- reader: ``read_film(path)`` as the worker calls it (parse, decode through pydicom's pixel
  handlers and plugins, Modality/VOI LUT, float32 [0, 1]); ``pixel_array`` alone is reported too;
- dcmtk: ``dcmdjpeg`` / ``dcmdjpls`` / ``dcmdrle`` (``dcmconv +te`` for native and deflated)
  to an uncompressed file, then read into a numpy array with pydicom. dcmtk has no JPEG 2000
  codec, so those rows have no dcmtk reference; they give pylibjpeg-openjpeg's ``pixel_array``
  (pydicom's own first choice, the reader's fallback) beside the reader's imagecodecs instead.
  The HTJ2K rows (PS3.5 A.4.11; encoded by imagecodecs' OpenJPH, as pydicom has no HTJ2K
  encoder) sit beside JPEG 2000 the same way. Those rows also time ``read_film(path,
  floor=WORKER_FLOOR)``: the film decoded with resolution levels left out
  (``inference/resolution.py``; 1250 x 1024 here).
``--syntaxes`` limits the run to some rows (e.g. ``jpeg_2000_lossless,jpeg_2000``).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path

import _common as C
import numpy as np
from pydicom import dcmread
from pydicom import uid as U

from cxr_triage.inference.resolution import WORKER_FLOOR

# name -> (transfer syntax, bits stored, dcmtk tool + args or None)
SYNTAXES = {
    "implicit_vr_little_endian": (U.ImplicitVRLittleEndian, 16, ["dcmconv", "+te"]),
    "explicit_vr_little_endian": (U.ExplicitVRLittleEndian, 16, ["dcmconv", "+te"]),
    "deflated_explicit_vr_little_endian": (U.DeflatedExplicitVRLittleEndian, 16, ["dcmconv", "+te"]),
    "rle_lossless": (U.RLELossless, 16, ["dcmdrle"]),
    "jpeg_baseline_8bit": (U.JPEGBaseline8Bit, 8, ["dcmdjpeg"]),
    "jpeg_extended_12bit": (U.JPEGExtended12Bit, 12, ["dcmdjpeg"]),
    "jpeg_lossless_p14": (U.JPEGLossless, 16, ["dcmdjpeg"]),
    "jpeg_lossless_sv1": (U.JPEGLosslessSV1, 16, ["dcmdjpeg"]),
    "jpeg_ls_lossless": (U.JPEGLSLossless, 16, ["dcmdjpls"]),
    "jpeg_ls_near_lossless": (U.JPEGLSNearLossless, 16, ["dcmdjpls"]),
    "jpeg_2000_lossless": (U.JPEG2000Lossless, 16, None),
    "jpeg_2000": (U.JPEG2000, 16, None),
    "htj2k_lossless": (U.HTJ2KLossless, 16, None),
    "htj2k_lossless_rpcl": (U.HTJ2KLosslessRPCL, 16, None),
}
#: the rows without a dcmtk codec: the reader (imagecodecs' OpenJPEG) against pylibjpeg-openjpeg
_J2K_ROWS = (U.JPEG2000Lossless, U.JPEG2000, U.HTJ2KLossless, U.HTJ2KLosslessRPCL)


def _htj2k(ds, ts: str):
    """``ds`` (native) re-encoded as HTJ2K by imagecodecs (OpenJPH, reversible, RPCL progression:
    right for .201 and .202, PS3.5 A.4.11): pydicom has no HTJ2K encoder."""
    import imagecodecs
    from pydicom.encaps import encapsulate

    frame = imagecodecs.htj2k_encode(ds.pixel_array, reversible=True)  # OpenJPH writes RPCL
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = ts
    return ds


def encode_all(work: Path, film16: np.ndarray, names: list[str]) -> dict[str, Path]:
    from cxr_triage.dicom_node.tools.film_to_dicom import png_to_dicom, write_dicom

    out = {}
    for name in names:
        ts, bits, _ = SYNTAXES[name]
        film = film16 if bits == 16 else (film16 >> (16 - bits)).astype(np.uint16 if bits > 8 else np.uint8)
        htj2k = ts in (U.HTJ2KLossless, U.HTJ2KLosslessRPCL)
        ds = png_to_dicom(film if bits != 12 else film.astype(np.float64) / 4095.0, sop_class="DX_PRES",
                          transfer_syntax_uid=U.ExplicitVRLittleEndian if htj2k else ts, bits_stored=bits)
        if htj2k:
            ds = _htj2k(ds, ts)
        out[name] = write_dicom(ds, work / f"{name}.dcm")
    return out


def time_reader(path: Path) -> tuple[float, float]:
    """(read_film seconds, dcmread + pixel_array seconds)."""
    full = time_read_film(path, None)
    start = time.perf_counter()
    arr = dcmread(path).pixel_array
    raw = time.perf_counter() - start
    assert arr.shape == (C.FILM_ROWS, C.FILM_COLS)
    return full, raw


def time_read_film(path: Path, floor: tuple[int, int] | None) -> float:
    """``read_film(path, floor=floor)`` seconds (the shape checked: full, or reduced by the
    levels the film says it left out)."""
    from cxr_triage.inference.reader import read_film

    start = time.perf_counter()
    film = read_film(path, floor=floor)
    seconds = time.perf_counter() - start
    scale = 2 ** film.reduction
    assert film.pixels.shape == (-(-C.FILM_ROWS // scale), -(-C.FILM_COLS // scale))
    return seconds


def time_plugin(path: Path, plugin: str) -> float:
    """dcmread + ``pixel_array`` through one pydicom plugin, seconds."""
    from pydicom.pixels import pixel_array

    start = time.perf_counter()
    arr = pixel_array(dcmread(path), decoding_plugin=plugin)
    seconds = time.perf_counter() - start
    assert arr.shape == (C.FILM_ROWS, C.FILM_COLS)
    return seconds


def time_dcmtk(path: Path, tool: list[str], work: Path) -> float:
    out = work / "dcmtk_out.dcm"
    start = time.perf_counter()
    subprocess.run([str(C.DCMTK / tool[0]), *tool[1:], str(path), str(out)], check=True,
                   capture_output=True)
    arr = dcmread(out).pixel_array
    seconds = time.perf_counter() - start
    assert arr.shape == (C.FILM_ROWS, C.FILM_COLS)
    out.unlink()
    return seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3, help="timed decodes per syntax and decoder")
    ap.add_argument("--syntaxes", default=",".join(SYNTAXES),
                    help="comma-separated rows to run (default: all)")
    args = ap.parse_args()
    wanted = [name for name in args.syntaxes.split(",") if name]
    unknown = sorted(set(wanted) - set(SYNTAXES))
    if unknown:
        ap.error(f"unknown syntaxes {unknown}; known: {', '.join(SYNTAXES)}")
    work = C.tempdir("cxrt-bench-decode-")
    try:
        film16 = C.detector_film(C.shared_pngs(1)[0])
        C.note(f"decode: encoding one film in {len(wanted)} transfer syntaxes")
        files = encode_all(work, film16, wanted)
        rows = {}
        for name, path in files.items():
            ts, bits, tool = SYNTAXES[name]
            j2k = ts in _J2K_ROWS
            time_reader(path)  # warm-up: imports, plugin discovery, page cache
            if tool:
                time_dcmtk(path, tool, work)
            full, raw, ref, fallback, reduced = [], [], [], [], []
            for _ in range(args.reps):
                f, r = time_reader(path)
                full.append(f)
                raw.append(r)
                if tool:
                    ref.append(time_dcmtk(path, tool, work))
                if j2k:
                    fallback.append(time_plugin(path, "pylibjpeg"))
                    reduced.append(time_read_film(path, WORKER_FLOOR))
            reader_fps = 1.0 / float(np.median(full))
            ref_fps = 1.0 / float(np.median(ref)) if ref else None
            rows[name] = {
                "transfer_syntax": str(ts), "bits_stored": bits,
                "file_mb": round(path.stat().st_size / 1e6, 2),
                "reader_read_film_films_per_s": round(reader_fps, 2),
                "reader_pixel_array_only_films_per_s": round(1.0 / float(np.median(raw)), 2),
                "dcmtk_reference": " ".join(tool) + " + pydicom read" if tool else None,
                "dcmtk_films_per_s": round(ref_fps, 2) if ref_fps else None,
                "ratio_reader_vs_dcmtk": C.ratio(reader_fps, ref_fps),
            }
            if fallback:
                rows[name]["pylibjpeg_openjpeg_pixel_array_films_per_s"] = round(1.0 / float(np.median(fallback)), 2)
                rows[name]["reader_read_film_worker_floor_films_per_s"] = round(1.0 / float(np.median(reduced)), 2)
                rows[name]["read_film_seconds_full_reduced"] = [[round(x, 3) for x in full], [round(x, 3) for x in reduced]]
            C.note(f"  {name}: reader {rows[name]['reader_read_film_films_per_s']} films/s, "
                   f"dcmtk {rows[name]['dcmtk_films_per_s']}")
        ratios = [r["ratio_reader_vs_dcmtk"] for r in rows.values() if r["ratio_reader_vs_dcmtk"]]
        C.emit({"benchmark": "decode", "film": f"{C.FILM_ROWS}x{C.FILM_COLS} DX, one real NIH film upscaled",
                "reps": args.reps, "syntaxes": rows,
                "ratio_reader_vs_dcmtk_min": min(ratios) if ratios else None,
                "ratio_reader_vs_dcmtk_median": round(float(np.median(ratios)), 3) if ratios else None,
                "machine": C.machine()})
    finally:
        C.rmtree(work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
