"""Response models of the worklist's JSON API (``/api/studies``, ``/api/studies/{uid}``)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, Field


class FilmOut(BaseModel):
    """One image of the study and its own triage result."""

    sop_instance_uid: str
    series_instance_uid: str | None = None
    sop_class_uid: str | None = None
    decision: str | None = Field(None, description="likely_normal | suspicious | not_assessable; null while pending")
    decision_text: str
    score: float | None = Field(None, description="calibrated probability that the film is abnormal")
    threshold: float | None = None
    operating_point: str | None = None
    reason: str | None = Field(None, description="coded not-assessable reason")
    reason_text: str | None = None
    nodule_score: float | None = Field(
        None, description="calibrated probability of a nodule or mass; null when the model has no such output")
    nodule_threshold: float | None = None
    nodule_flag: bool | None = Field(
        None, description="nodule/mass flag (nodule_score >= nodule_threshold), an added finding that does not "
        "change the decision; null when the model has no nodule/mass output, the film was not scored, or "
        "the model gives the score without a flag (nodule_point says why)")
    nodule_point: str | None = Field(
        None, description="the nodule/mass operating point in words: its share of validation normals and "
        "sensitivity on validation Nodule/Mass films, or why no flag is given ('score only, no flag: ...')")
    heatmap_available: bool = False
    image_url: str | None = None
    heatmap_url: str | None = None


class DeliveryOut(BaseModel):
    """One delivery attempt of the result, or its current state."""

    time: dt.datetime
    destination: str
    outcome: str
    detail: str = ""


class FeedbackOut(BaseModel):
    """A radiologist's assessment of the study's AI result (IHE AI Result Assessment style)."""

    id: int
    result_id: int = Field(description="the AI result assessed (a later, amended result has another id)")
    verdict: str = Field(description="accept | reject")
    finding: str | None = Field(None, description="what the radiologist saw (normal, consolidation, "
                                "nodule_mass, effusion, pneumothorax, cardiomegaly, atelectasis, other)")
    user: str
    at: dt.datetime
    decision: str | None = Field(None, description="the AI decision assessed")
    score: float | None = None
    model_name: str | None = None
    model_version: str | None = None
    operating_point: str | None = None
    threshold: float | None = None


class FeedbackIn(BaseModel):
    verdict: str = Field(description="accept | reject")
    finding: str | None = Field(None, description="optional: the finding seen (see FeedbackOut)")


class PriorOut(BaseModel):
    """One of the patient's earlier studies the result looked at (``[priors]``)."""

    study_instance_uid: str
    study_date: dt.date | None = None
    source: str = Field(description="node (this node's result) | pacs (the PACS's C-FIND answer) | node+pacs")
    accession_number: str | None = None
    modalities: list[str] = Field(default_factory=list)
    description: str | None = None
    decision: str | None = Field(None, description="this node's result of it; null when the node made none")
    decision_text: str
    nodule_flag: bool | None = None
    sr_sop_instance_uid: str | None = Field(None, description="this node's result SR of it")
    cited: bool = Field(False, description="the prior result that raised this study to suspicious")
    url: str | None = Field(None, description="its study page, when this node triaged it")


class StudySummaryOut(BaseModel):
    """A worklist row."""

    rank: int = Field(description="1-based position in the reading order")
    band: str = Field(description="overdue | suspicious | not_assessable | pending | likely_normal")
    study_instance_uid: str
    accession_number: str | None = Field(None, description="the order's accession number (what a RIS keys on)")
    patient_id: str | None = None
    patient_name: str | None = Field(None, description="DICOM person name, family^given^middle^prefix^suffix")
    decision: str = Field(description="likely_normal | suspicious | not_assessable | pending")
    decision_text: str
    reason: str | None = Field(None, description="why the study is not assessable: the coded reasons of its "
                               "films (comma-separated, film order); null for an assessed or pending study")
    reason_text: str | None = Field(None, description="the reasons in plain words")
    score: float | None = None
    nodule_flag: bool | None = Field(
        None, description="any film flagged for a nodule or mass (an added finding, not the decision); "
        "null when the model has no nodule/mass output or the study is not triaged")
    nodule_score: float | None = Field(None, description="the highest film nodule/mass score")
    nodule_point: str | None = Field(
        None, description="the nodule/mass operating point in words, or why no flag is given (study detail "
        "only; null on worklist rows)")
    received_at: dt.datetime
    triaged_at: dt.datetime | None = None
    wait_minutes: float = Field(description="minutes since the first instance was received")
    overdue: bool = Field(description="past the maximum wait: moved to the top whatever the decision")
    delivery_status: str
    amended: bool = Field(False, description="the current result replaced an earlier result of the study "
                          "(more images arrived); its SR names the replaced SR as predecessor")
    feedback_verdict: str | None = Field(None, description="the latest radiologist assessment of the current "
                                         "AI result: accept | reject; null when none")
    feedback_user: str | None = None
    escalation: str | None = Field(None, description="why a likely-normal call was raised to suspicious: "
                                   "prior_suspicious_result (the same patient's recent suspicious or "
                                   "nodule/mass-flagged result); null when not raised")
    escalation_text: str | None = None
    n_instances: int
    url: str
    api_url: str
    thumbnail_url: str | None = None


class WorklistOut(BaseModel):
    generated_at: dt.datetime
    max_wait_minutes: float
    count: int
    studies: list[StudySummaryOut]


class StudyDetailOut(StudySummaryOut):
    """A study with per-image detail, the result SR in plain words and its delivery history."""

    model_name: str | None = None
    model_version: str | None = None
    films: list[FilmOut]
    deliveries: list[DeliveryOut]
    feedback: list[FeedbackOut] = Field(default_factory=list, description="every radiologist assessment, oldest first")
    priors: list[PriorOut] = Field(default_factory=list, description="the patient's earlier studies the "
                                   "result looked at, newest first ([priors])")
    result_summary: list[str] = Field(
        default_factory=list, description="what the result SR states, in plain sentences (read back from the SR)")
    result_sr: list[dict[str, Any]] | None = Field(
        None, description="the result SR's whole content tree as {depth, concept, value} lines")
