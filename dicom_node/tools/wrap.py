"""``cxr-triage wrap``: PNG/JPEG chest films -> CR / DX / SC DICOM files, with an index CSV.

The command-line face of :func:`film_to_dicom.png_to_dicom` (also
``python -m cxr_triage.dicom_node.tools.wrap``). Writes ``<out>/<film>.dcm`` and
``<out>/wrapped.csv`` (film, dicom file, SOP/Study Instance UID, accession number), which
``evaluate --sr-dir`` can match SRs by.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from pydicom.uid import UID, JPEGBaseline8Bit, generate_uid

from cxr_triage.dicom_node.tools.film_encoding import SUPPORTED_SYNTAXES, syntax_from_text
from cxr_triage.dicom_node.tools.film_to_dicom import SopClassName, png_to_dicom, write_dicom

#: ``--sop-class`` spellings -> :data:`SOP_CLASS_UIDS` keys
SOP_CLASS_OPTIONS: dict[str, SopClassName] = {"CR": "CR", "DX": "DX_PRES", "DX_PRES": "DX_PRES",
                                               "DX_PROC": "DX_PROC", "SC": "SC"}
FILM_SUFFIXES = (".png", ".jpg", ".jpeg")
#: ``--view`` / manifest view spellings -> DICOM View Position (0018,5101) defined terms
VIEW_ALIASES = {"PA": "PA", "AP": "AP", "LL": "LL", "RL": "RL", "L": "LL", "LAT": "LL", "LATERAL": "LL",
                "LEFT LATERAL": "LL", "RIGHT LATERAL": "RL"}
#: manifest columns read as the view (first present wins); NIH's CSV says "View Position"
VIEW_COLUMNS = ("view", "view_position", "View Position", "ViewPosition")

def _film_paths(items: Sequence[str]) -> list[Path]:
    """PNG/JPEG files named, and those under named folders (recursively, sorted)."""
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            out += sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in FILM_SUFFIXES)
        else:
            out.append(p)
    return out


def _manifest_info(path: Path) -> dict[Path, dict[str, str]]:
    """Resolved film path -> its manifest row (patient_id, age, sex, view, ...)."""
    import csv

    rows: dict[Path, dict[str, str]] = {}
    with path.open(newline="", encoding="utf-8-sig") as fh:
        for row in csv.DictReader(fh):
            name = (row.get("file") or "").strip()
            if name:
                p = Path(name)
                rows[(p if p.is_absolute() else path.parent / p).resolve()] = {k: (v or "") for k, v in row.items() if k}
    return rows


def _unmatched_lines(manifest: Path, films: Sequence[Path], info: dict[Path, dict[str, str]]) -> list[str]:
    """What ``--manifest`` did not cover, for stderr: none when every film has a row; else the
    count, a few films and the path rule (a row's ``file`` is relative to the manifest's folder,
    or absolute), and the manifest's first rows for comparison."""
    missing = [f for f in films if f.resolve() not in info]
    if not missing:
        return []
    folder = manifest.resolve().parent
    some = ", ".join(str(f) for f in missing[:3]) + (f" (and {len(missing) - 3} more)" if len(missing) > 3 else "")
    rows = ", ".join(os.path.relpath(p, folder) for p in list(info)[:2]) or "none"
    what = ("no film matches a row: nothing wrapped" if len(missing) == len(films) else
            "they are wrapped without its values (Patient's Name Anonymous, no Accession Number)")
    return [f"--manifest {manifest}: {len(missing)} of {len(films)} film(s) have no row: {some}; its file "
            f"column is read relative to the manifest's folder {folder} (or absolute), e.g. rows {rows}; {what}"]


def _view_position(text: str) -> str:
    """A view as written (``pa``, ``Lateral``, ``LL``) -> its View Position defined term; ValueError
    for one that is none of PA, AP, lateral (LL, RL)."""
    view = " ".join(text.replace("_", " ").upper().split())
    if view not in VIEW_ALIASES:
        raise ValueError(f"view {text!r} is not PA, AP or lateral (LL, RL, LATERAL)")
    return VIEW_ALIASES[view]


def _row_view(row: dict[str, str]) -> str:
    return next((row[c] for c in VIEW_COLUMNS if (row.get(c) or "").strip()), "")


def _dicom_age(text: str) -> str | None:
    """Years (``"45"``, ``"45.0"``) or a DICOM AS (``"045Y"``) -> DICOM AS; None when empty/unreadable."""
    from cxr_triage.contract.patient import parse_age_years

    t = text.strip()
    if not t:
        return None
    years = parse_age_years(t)
    if years is None:
        try:
            years = float(t)
        except ValueError:
            return None
    return f"{int(years):03d}Y" if years >= 2 else f"{int(round(years * 12)):03d}M"


def register(subparsers: Any, name: str, help_text: str) -> None:
    """``cxr-triage wrap``: the command-line face of :func:`png_to_dicom`."""
    import argparse

    p = subparsers.add_parser(
        name, help=help_text, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Wrap PNG/JPEG chest films into DICOM (CR, DX For Presentation/Processing or Secondary "
                    "Capture) in any supported transfer syntax, e.g. to send a labelled folder through a node "
                    "with dcmtk storescu. Writes <out>/<film>.dcm and <out>/wrapped.csv (film, dicom file, "
                    "SOP/Study Instance UID, accession number), which `evaluate --sr-dir` can match SRs by.")
    add_arguments(p)
    p.set_defaults(func=run)


def add_arguments(p: Any) -> None:
    p.add_argument("films", nargs="+", help="PNG/JPEG files, or folders searched recursively")
    p.add_argument("--out", required=True, help="folder for the DICOM files")
    p.add_argument("--sop-class", default="DX", choices=sorted(SOP_CLASS_OPTIONS),
                   help="CR, DX (For Presentation), DX_PROC (For Processing) or SC (Secondary Capture)")
    p.add_argument("--transfer-syntax", default="ExplicitVRLittleEndian",
                   help="keyword or UID: " + ", ".join(UID(ts).keyword for ts in SUPPORTED_SYNTAXES))
    p.add_argument("--bits-stored", type=int, default=None,
                   help="8..16 (default: 8 for JPEG Baseline, else 12)")
    p.add_argument("--monochrome1", action="store_true", help="write MONOCHROME1 (inverted) pixels")
    p.add_argument("--manifest", help="manifest CSV (file, patient_id, patient_name, accession_number, age, sex, "
                                      "view): per-film header values; an option given on the command line wins. "
                                      "A row's file is a path relative to the manifest's folder (or absolute); "
                                      "films without a row are named on stderr, and none matching is exit 2")
    p.add_argument("--patient-id", default="", help="Patient ID of every film (default: the manifest's, else a "
                   "pseudonym made from the file name)")
    p.add_argument("--patient-name", default="", help="Patient's Name of every film, DICOM PN (Doe^Jane) "
                   "(default: the manifest's patient_name, else Anonymous)")
    p.add_argument("--age", default="", help="age in years or DICOM AS (045Y) (default: the manifest's, else none)")
    p.add_argument("--sex", default="", help="M, F or O (default: the manifest's, else O)")
    p.add_argument("--view", default="", help="PA, AP or lateral (LL, RL; LATERAL is read as LL) (default: the "
                   "manifest's view or view_position, else PA)")
    p.add_argument("--accession-number", default="", help="Accession Number of every film (default: the manifest's "
                   "accession_number, else none)")
    p.add_argument("--one-study", action="store_true", help="all films in one study (default: one study per film)")


def run(args: Any, cfg: Any = None) -> int:
    """Wrap every film; one line per unreadable film; exit 0, 1 (some failed) or 2 (bad options, or a
    --manifest that matches none of the films: nothing written)."""
    import csv
    import hashlib
    import logging
    import sys

    logging.getLogger("openjpeg").setLevel(logging.WARNING)  # one INFO line per encoded tile
    try:
        tsyntax = syntax_from_text(args.transfer_syntax)
    except ValueError as exc:
        print(f"cxr-triage wrap: {exc}", file=sys.stderr)
        return 2
    try:
        _view_position(args.view or "PA")
    except ValueError as exc:
        print(f"cxr-triage wrap: --view: {exc}", file=sys.stderr)
        return 2
    bits = args.bits_stored or (8 if tsyntax == JPEGBaseline8Bit else 12)
    films = _film_paths(args.films)
    missing = [str(p) for p in films if not p.is_file()]
    if missing or not films:
        print(f"cxr-triage wrap: {len(missing)} film(s) not found: {', '.join(missing[:5])}" if missing
              else "cxr-triage wrap: no PNG/JPEG films found", file=sys.stderr)
        return 2
    try:
        info = _manifest_info(Path(args.manifest)) if args.manifest else {}
    except (OSError, UnicodeDecodeError) as exc:
        print(f"cxr-triage wrap: manifest not readable: {exc}", file=sys.stderr)
        return 2
    if args.manifest:
        unmatched = _unmatched_lines(Path(args.manifest), films, info)
        for line in unmatched:
            print(f"cxr-triage wrap: {line}", file=sys.stderr)
        if all(f.resolve() not in info for f in films):
            return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    study = generate_uid() if args.one_study else None
    series = generate_uid() if args.one_study else None
    failed: list[str] = []
    rows: list[tuple[str, str, str, str, str]] = []
    used: set[str] = set()
    for n, film in enumerate(films, start=1):
        row = info.get(film.resolve(), {})
        pid = args.patient_id or row.get("patient_id", "") or "WRAP-" + hashlib.sha256(film.name.encode()).hexdigest()[:10]
        accession = (args.accession_number or row.get("accession_number", "")).strip()
        try:
            ds = png_to_dicom(
                film, sop_class=SOP_CLASS_OPTIONS[args.sop_class], transfer_syntax_uid=tsyntax, bits_stored=bits,
                photometric="MONOCHROME1" if args.monochrome1 else "MONOCHROME2",
                study_uid=study, series_uid=series, patient_id=pid[:64],
                patient_name=(args.patient_name or row.get("patient_name", "")).strip() or "Anonymous",
                patient_age=_dicom_age(args.age or row.get("age", "")),
                patient_sex=(args.sex or row.get("sex", "") or "O").upper()[:1],
                view_position=_view_position(args.view or _row_view(row) or "PA"),
                accession_number=accession[:16], instance_number=n if args.one_study else 1)
            name = film.stem if film.stem not in used else f"{film.stem}_{n}"
            used.add(name)
            path = write_dicom(ds, out / f"{name}.dcm")
        except (OSError, ValueError, RuntimeError) as exc:
            failed.append(f"{film} ({type(exc).__name__}: {exc})")
            continue
        rows.append((str(film), str(path), str(ds.SOPInstanceUID), str(ds.StudyInstanceUID), str(ds.AccessionNumber)))
    with (out / "wrapped.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["film", "dicom", "sop_instance_uid", "study_instance_uid", "accession_number"])
        w.writerows(rows)
    for line in failed[:5]:
        print(f"cxr-triage wrap: not wrapped: {line}", file=sys.stderr)
    if len(failed) > 5:
        print(f"cxr-triage wrap: ... and {len(failed) - 5} more not wrapped", file=sys.stderr)
    print(f"wrapped {len(rows)} of {len(films)} film(s) as {args.sop_class} {tsyntax.name} into {out} "
          f"(index: {out / 'wrapped.csv'})")
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cxr_triage.dicom_node.tools.wrap`` (the same as ``cxr-triage wrap``)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m cxr_triage.dicom_node.tools.wrap",
                                description="Wrap PNG/JPEG films into CR/DX/SC DICOM (same as `cxr-triage wrap`).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    import sys

    sys.exit(main())
