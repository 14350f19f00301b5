"""A result SR's content tree in plain words, for the study page.

Generic over any SR (walks ContentSequence with pydicom), so the page shows exactly what the
PACS received, whatever template version built it. Header patient attributes are not shown.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from cxr_triage.contract.study import PLAIN_DECISION, PLAIN_ESCALATION, PLAIN_REASON
from cxr_triage.dicom_node.results.sr_reader import read_result_sr


@dataclass
class SRLine:
    depth: int
    concept: str
    value: str


def _meaning(seq_item: Dataset | None) -> str:
    if seq_item is None:
        return ""
    return str(seq_item.get("CodeMeaning", "") or seq_item.get("CodeValue", ""))


def _first(ds: Dataset, keyword: str) -> Dataset | None:
    seq = ds.get(keyword)
    return seq[0] if seq else None


def _value(item: Dataset) -> str:
    vt = item.get("ValueType", "")
    if vt == "CODE":
        return _meaning(_first(item, "ConceptCodeSequence"))
    if vt == "NUM":
        mv = _first(item, "MeasuredValueSequence")
        if mv is None:
            return "(no value)"
        unit = _meaning(_first(mv, "MeasurementUnitsCodeSequence"))
        unit = "" if unit in ("", "no units", "1") else f" {unit}"
        return f"{mv.get('NumericValue', '')}{unit}"
    if vt in ("TEXT", "UIDREF", "DATETIME", "DATE", "TIME"):
        for kw in ("TextValue", "UID", "DateTime", "Date", "Time"):
            if kw in item:
                return str(item.get(kw))
        return ""
    if vt in ("IMAGE", "COMPOSITE"):
        ref = _first(item, "ReferencedSOPSequence")
        return f"image {ref.get('ReferencedSOPInstanceUID', '?')}" if ref is not None else "image"
    if vt == "PNAME":
        return "(name withheld)"
    return ""


def _walk(items: Iterable[Dataset] | None, depth: int, out: list[SRLine], limit: int) -> None:
    for item in items or []:
        if len(out) >= limit:
            return
        concept = _meaning(_first(item, "ConceptNameCodeSequence")) or item.get("ValueType", "")
        out.append(SRLine(depth, concept, _value(item)))
        _walk(item.get("ContentSequence"), depth + 1, out, limit)


def sr_lines(source: str | Path | Dataset, limit: int = 400) -> list[SRLine]:
    """Title, then each content item as (depth, concept, value) in document order."""
    ds = source if isinstance(source, Dataset) else pydicom.dcmread(str(source))
    title = _meaning(_first(ds, "ConceptNameCodeSequence")) or str(ds.get("SeriesDescription", "Report"))
    out = [SRLine(0, title, "")]
    for kw, label in (("CompletionFlag", "Completion"), ("VerificationFlag", "Verification"),
                      ("PreliminaryFlag", "Preliminary")):
        if kw in ds:
            out.append(SRLine(1, label, str(ds.get(kw))))
    _walk(ds.get("ContentSequence"), 1, out, limit)
    return out


def _fmt(x: float | None) -> str:
    return "no score" if x is None else f"{x:.3f}"


def sr_summary(source: str | Path | Dataset) -> list[str]:
    """A few sentences saying what a cxr-triage result SR states (empty if it is not one).

    Read back with ``sr_reader`` from the coded content, so the page tells what the PACS got.
    """
    ds = source if isinstance(source, Dataset) else pydicom.dcmread(str(source))
    try:
        r = read_result_sr(ds)
    except (ValueError, KeyError, AttributeError):
        return []
    out = [
        f"The AI triage report sent to PACS calls this study {PLAIN_DECISION[r.decision.value].lower()}"
        + (f", abnormality score {_fmt(r.score)} against threshold {_fmt(r.threshold)}"
           f" (operating point {r.operating_point})" if r.score is not None else "")
        + (f"; model {r.model_name} {r.model_version}." if r.model_name else ".")
    ]
    if r.escalation is not None:
        e = r.escalation
        out.append(f"Raised to suspicious: {PLAIN_ESCALATION.get(e.reason.value, e.reason.value)}"
                   f" (the same patient's study {e.prior_study_uid}"
                   + (f" of {e.prior_study_date[:4]}-{e.prior_study_date[4:6]}-{e.prior_study_date[6:]}"
                      if len(e.prior_study_date) == 8 else "")
                   + (f", result SR {e.prior_sr_uid}" if e.prior_sr_uid else "")
                   + "); its own films scored below the threshold.")
    if r.nodule_flag is not None:
        out.append(f"Nodule/mass flag: {'flagged' if r.nodule_flag else 'not flagged'}"
                   f" (highest nodule/mass score {_fmt(r.nodule_score)} against threshold"
                   f" {_fmt(r.nodule_threshold)}); an added finding, it does not change the decision.")
    elif r.nodule_score is not None:
        out.append(f"Nodule/mass: highest score {_fmt(r.nodule_score)}, no flag given; an added finding,"
                   " it does not change the decision.")
    if r.nodule_point:
        out.append(f"Nodule/mass {r.nodule_point}.")
    for i, g in enumerate(r.films, 1):
        text = f"Image {i}: {PLAIN_DECISION[g.decision.value].lower()}"
        if g.score is not None:
            text += f", score {_fmt(g.score)}"
        if g.nodule_flag is not None:
            text += f", nodule/mass {'flagged' if g.nodule_flag else 'not flagged'} ({_fmt(g.nodule_score)})"
        elif g.nodule_score is not None:
            text += f", nodule/mass score {_fmt(g.nodule_score)} (no flag)"
        if g.reason is not None:
            text += f" ({PLAIN_REASON.get(g.reason.value, g.reason.value)}"
            text += f": {g.reason_detail})" if g.reason_detail else ")"
        out.append(text + ".")
    flags = ", ".join(str(ds.get(k, "")).lower() for k in ("PreliminaryFlag", "VerificationFlag") if k in ds)
    out.append(f"The report references {len(r.evidence_sop_instance_uids)} source image(s)"
               + (f" and is marked {flags}." if flags else "."))
    return out
