"""What triage says about a film and a study: the types every later stage consumes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from typing import Any

import numpy as np


class Decision(str, Enum):
    """Per film and per study. Values are stable: they are stored and coded in the SR."""

    LIKELY_NORMAL = "likely_normal"
    SUSPICIOUS = "suspicious"
    NOT_ASSESSABLE = "not_assessable"


class NotAssessableReason(str, Enum):
    """Why the intended-use gate (or decoding) refused a film. Stable codes, documented in
    the SR code mapping (docs/conformance.md, 'Result codes')."""

    NON_IMAGE = "non_image"                  # SOP class without pixel data (SR, PR, ...)
    UNSUPPORTED_SOP_CLASS = "unsupported_sop_class"  # image class outside CR/DX/SC
    MULTI_FRAME = "multi_frame"
    COLOR = "color"                          # not a grayscale radiograph
    LATERAL_VIEW = "lateral_view"
    NON_CHEST = "non_chest"                  # Body Part Examined not chest
    PAEDIATRIC = "paediatric"                # age known and under the minimum
    NON_HUMAN = "non_human"                  # Patient Species Description/Code present, not human
    TOO_SMALL = "too_small"                  # shorter side below the readable minimum
    UNDECODABLE = "undecodable"              # pixel data missing, corrupt or unsupported codec
    NOT_RADIOGRAPH = "not_radiograph"        # a scanned document, screenshot, drawing or synthetic image
    NOT_UPRIGHT = "not_upright"              # header silent and the pixels clearly turned


class EscalationReason(str, Enum):
    """Why a study's own likely-normal call was raised to suspicious (stable codes, coded in the
    SR, the HL7 message and the worklist)."""

    PRIOR_SUSPICIOUS = "prior_suspicious_result"   # the same patient's recent suspicious / nodule-flagged result


class NotAssessable(Exception):
    """Raised by the reader or gate; carries the coded reason and a human sentence."""

    def __init__(self, reason: NotAssessableReason, detail: str):
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class FilmResult:
    """Triage of one film. ``heatmap`` is (h, w) in [0, 1]; it and ``pixels`` are not serialised to JSON."""

    decision: Decision
    source: str = ""                          # file path or spool path
    sop_instance_uid: str | None = None
    series_instance_uid: str | None = None
    study_instance_uid: str | None = None
    sop_class_uid: str | None = None
    score: float | None = None                # calibrated P(abnormal)
    threshold: float | None = None
    operating_point: str | None = None
    nodule_score: float | None = None         # calibrated P(nodule or mass); None: model has no such output
    nodule_threshold: float | None = None
    nodule_flag: bool | None = None           # nodule_score >= nodule_threshold (an added finding); None: no flag given
    #: the nodule/mass point in words (``contract.nodule_point.NodulePoint.statement``): its
    #: validation figures, and why no flag is given when the model shows none
    nodule_point: str | None = None
    model_name: str | None = None
    model_version: str | None = None
    reason: NotAssessableReason | None = None
    reason_detail: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    heatmap: np.ndarray | None = field(default=None, repr=False, compare=False)
    #: the film as decoded for scoring, float32 (H, W) in [0, 1], MONOCHROME2; kept only on
    #: request (``Triager(keep_pixels=True)``: the node's summary image), not serialised
    pixels: np.ndarray | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(replace(self, heatmap=None, pixels=None))  # arrays: not serialised, not copied
        data.pop("heatmap")
        data.pop("pixels")
        data["decision"] = self.decision.value
        data["reason"] = self.reason.value if self.reason else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FilmResult":
        data = dict(data)
        data.pop("heatmap", None)
        data["decision"] = Decision(data["decision"])
        data["reason"] = NotAssessableReason(data["reason"]) if data.get("reason") else None
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True, kw_only=True)
class PriorStudy:
    """An earlier study of the same patient: this node's result of it (``decision`` and
    ``nodule_flag``, None when the node made none) and what the PACS said of it (C-FIND).

    ``study_date``: DICOM DA (YYYYMMDD, "" when unknown); ``source``: "node" (this node's
    result), "pacs" (a C-FIND answer) or "node+pacs"; ``sr_*``: the node's result SR of it.
    Holds no patient identity: it was matched before it got here."""

    study_uid: str
    source: str
    study_date: str = ""
    accession_number: str = ""
    modalities: tuple[str, ...] = ()
    description: str = ""
    decision: Decision | None = None
    nodule_flag: bool | None = None
    sr_uid: str | None = None
    sr_series_uid: str | None = None
    sr_class_uid: str | None = None
    escalated: bool = False          # its suspicious call came from a prior of its own

    @property
    def suspicious(self) -> bool:
        """The node called it suspicious on its own films (not only by escalation: that would
        chain one old result forward for ever), or flagged a nodule/mass."""
        return (self.decision is Decision.SUSPICIOUS and not self.escalated) or bool(self.nodule_flag)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["decision"] = self.decision.value if self.decision else None
        data["modalities"] = list(self.modalities)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PriorStudy":
        data = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        data["decision"] = Decision(data["decision"]) if data.get("decision") else None
        data["modalities"] = tuple(data.get("modalities") or ())
        return cls(**data)


@dataclass(frozen=True, kw_only=True)
class Escalation:
    """A study raised to suspicious by an earlier result (``decision.escalate_for_priors``):
    the coded reason and the prior it used (its study, date, the node's SR of it, and what
    that result said: "suspicious" or "nodule_mass")."""

    reason: EscalationReason
    prior_study_uid: str
    prior_study_date: str = ""
    prior_sr_uid: str | None = None
    prior_finding: str = "suspicious"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "reason": self.reason.value}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Escalation":
        data = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**{**data, "reason": EscalationReason(data["reason"])})


@dataclass
class StudyResult:
    """One result per study: the most severe decision over its assessable films."""

    study_instance_uid: str
    decision: Decision
    score: float | None
    films: list[FilmResult]
    nodule_score: float | None = None   # the highest film nodule/mass score
    nodule_flag: bool | None = None     # any assessable film flagged; None: no nodule/mass output
    #: the same patient's earlier studies looked at (``[priors]``), newest first
    priors: list[PriorStudy] = field(default_factory=list)
    #: set when a prior result raised a likely-normal call to suspicious
    escalation: Escalation | None = None
    #: the point the node decides at (a site threshold's under ``--site-threshold``), set by the
    #: worker so that a study no film was scored in states it too; None: a scored film's, else
    #: the model's default
    operating_point: str | None = None
    threshold: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "study_instance_uid": self.study_instance_uid,
            "decision": self.decision.value,
            "score": self.score,
            "nodule_score": self.nodule_score,
            "nodule_flag": self.nodule_flag,
            "films": [f.to_dict() for f in self.films],
            "priors": [p.to_dict() for p in self.priors],
            "escalation": self.escalation.to_dict() if self.escalation else None,
        }


def aggregate_study(study_instance_uid: str, films: list[FilmResult]) -> StudyResult:
    """Suspicious if any assessable film is; likely normal if all assessable films are;
    not assessable when no film could be assessed. The study score is the maximum."""
    assessed = [f for f in films if f.decision is not Decision.NOT_ASSESSABLE]
    if not assessed:
        return StudyResult(study_instance_uid, Decision.NOT_ASSESSABLE, None, films)
    top = max(assessed, key=lambda f: f.score if f.score is not None else -1.0)
    decision = (
        Decision.SUSPICIOUS
        if any(f.decision is Decision.SUSPICIOUS for f in assessed)
        else Decision.LIKELY_NORMAL
    )
    nodule = [f for f in assessed if f.nodule_score is not None]
    flags = [f.nodule_flag for f in nodule if f.nodule_flag is not None]  # none: the model shows no flag
    return StudyResult(study_instance_uid, decision, top.score, films,
                       nodule_score=max(f.nodule_score for f in nodule if f.nodule_score is not None) if nodule else None,
                       nodule_flag=any(flags) if flags else None)
