"""The view-model shared by the JSON API and the HTML pages: worklist rows and study detail."""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, overload

from fastapi import HTTPException
from pydantic import BaseModel

from cxr_triage.contract.result import PriorStudy
from cxr_triage.contract.study import PLAIN_ESCALATION, FeedbackRecord, FilmRecord, Outcome, StudyRecord
from cxr_triage.dicom_node.store import heatmaps
from cxr_triage.dicom_node.web.schemas import (
    DeliveryOut,
    FeedbackOut,
    FilmOut,
    PriorOut,
    StudyDetailOut,
    StudySummaryOut,
)
from cxr_triage.dicom_node.web.settings import WebSettings
from cxr_triage.dicom_node.web.worklist import (
    PLAIN_DECISION,
    PLAIN_REASON,
    WorklistSource,
    band,
    filter_studies,
    order_worklist,
)

log = logging.getLogger(__name__)

DECISION_FILTERS = ("suspicious", "not_assessable", "likely_normal", "pending")


def wait_text(minutes: float) -> str:
    """Waiting time the way a reading room says it."""
    if minutes < 1:
        return f"{minutes * 60:.0f} s"
    if minutes < 120:
        return f"{minutes:.0f} min"
    return f"{int(minutes // 60)} h {int(minutes % 60):02d} min"


@overload
def utc(ts: float) -> dt.datetime: ...
@overload
def utc(ts: None) -> None: ...
@overload
def utc(ts: float | None) -> dt.datetime | None: ...
def utc(ts: float | None) -> dt.datetime | None:
    return None if ts is None else dt.datetime.fromtimestamp(ts, tz=dt.timezone.utc)


def person_name(pn: str | None) -> str:
    """A DICOM person name as people write it: "Doe^Jane^M" -> "Doe, Jane M"."""
    if not pn:
        return ""
    family, given, middle, prefix, suffix = (str(pn).split("=")[0].split("^") + [""] * 5)[:5]
    first = " ".join(p for p in (prefix, given, middle) if p)
    return ", ".join(p for p in (family, first) if p) + (f" {suffix}" if suffix else "")


def local_time(ts: float | None) -> str:
    return "" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def day_bounds(date_from: dt.date | None, date_to: dt.date | None) -> tuple[float | None, float | None]:
    """Inclusive local-calendar days -> [since, until) Unix seconds."""
    since = time.mktime(date_from.timetuple()) if date_from else None
    until = time.mktime((date_to + dt.timedelta(days=1)).timetuple()) if date_to else None
    return since, until


def form_date(text: str) -> dt.date | None:
    try:
        return dt.date.fromisoformat(text) if text else None
    except ValueError:
        return None


def display_film(entry: StudyRecord) -> FilmRecord | None:
    """The film that represents the study: the highest-scoring assessed one, else the first."""
    films = [f for f in entry.films if f.spool_path]
    scored = [f for f in films if f.outcome is not None and f.outcome.score is not None]
    if scored:
        return max(scored, key=lambda f: f.outcome.score if f.outcome and f.outcome.score is not None else 0.0)
    return films[0] if films else None


def feedback_out(f: FeedbackRecord) -> FeedbackOut:
    return FeedbackOut(**{**asdict(f), "at": utc(f.at)})


def outcome_fields(o: Outcome | None, model: type[BaseModel]) -> dict[str, Any]:
    """What triage said (:class:`Outcome`, None while pending) as the fields ``model`` (an API
    schema) declares: the coded values and their plain words (``decision_text``,
    ``reason_text``). The one mapping of an outcome to the API, for films and studies."""
    reasons = [r.value for r in o.reasons] if o else []
    words = "; ".join(PLAIN_REASON.get(r, r) for r in reasons)
    detail = o.reason_detail if o else None
    every = {
        **({k: v for k, v in asdict(o).items() if k not in ("decision", "reasons")} if o else {}),
        "decision": o.decision.value if o else None,
        "decision_text": PLAIN_DECISION[o.decision.value if o else "pending"],
        "reason": ", ".join(reasons) or None,
        "reason_text": (words + (f" ({detail})" if detail else "")) if reasons else None,
    }
    return {k: v for k, v in every.items() if k in model.model_fields}


def escalation_fields(e: StudyRecord) -> dict[str, Any]:
    """``escalation`` (the coded reason a likely-normal call was raised) and its plain words."""
    escalation = e.result.escalation if e.result else None
    code = escalation.reason.value if escalation else None
    return {"escalation": code, "escalation_text": PLAIN_ESCALATION.get(code, code) if code else None}


def prior_out(p: PriorStudy, e: StudyRecord) -> PriorOut:
    """One earlier study of the patient, with this node's result of it (if any)."""
    cited = e.result is not None and e.result.escalation is not None \
        and e.result.escalation.prior_study_uid == p.study_uid
    return PriorOut(
        study_instance_uid=p.study_uid, study_date=_da(p.study_date), source=p.source,
        accession_number=p.accession_number or None, modalities=list(p.modalities),
        description=p.description or None, decision=p.decision.value if p.decision else None,
        decision_text=PLAIN_DECISION[p.decision.value] if p.decision else "No result from this node",
        nodule_flag=p.nodule_flag, sr_sop_instance_uid=p.sr_uid, cited=cited,
        url=f"/studies/{p.study_uid}" if "node" in p.source else None)


def _da(text: str) -> dt.date | None:
    try:
        return dt.datetime.strptime(text, "%Y%m%d").date() if text else None
    except ValueError:
        return None


class StudyViews:
    """Worklist rows and study detail over one source, settings and clock."""

    def __init__(self, source: WorklistSource, settings: WebSettings, clock: Callable[[], float]) -> None:
        self.source = source
        self.settings = settings
        self.clock = clock

    def summary(self, rank: int, band_name: str, e: StudyRecord, now: float) -> StudySummaryOut:
        """One worklist row: the study's outcome, identity, times, delivery and feedback."""
        uid = e.study_uid
        has_image = bool(e.films) or e.n_instances > 0  # list rows carry no films: checked on request
        return StudySummaryOut(
            **{**outcome_fields(e.outcome, StudySummaryOut), "decision": e.status}, **asdict(e.identity),
            rank=rank, band=band_name, study_instance_uid=uid,
            received_at=utc(e.received_at), triaged_at=utc(e.triaged_at),
            wait_minutes=round(e.wait_s(now) / 60.0, 1), overdue=band_name == "overdue",
            delivery_status=e.delivery_status, amended=e.amended, feedback_verdict=e.feedback_verdict,
            feedback_user=e.feedback_user, **escalation_fields(e), n_instances=e.n_instances or len(e.films),
            url=f"/studies/{uid}", api_url=f"/api/studies/{uid}",
            thumbnail_url=f"/studies/{uid}/thumbnail.png" if has_image else None,
        )

    def worklist(self, decision: list[str] | None, date_from: dt.date | None, date_to: dt.date | None,
                 limit: int | None) -> tuple[float, list[StudySummaryOut]]:
        settings = self.settings
        now = self.clock()
        since, until = day_bounds(date_from, date_to)
        entries = filter_studies(self.source.list_studies(since, until), decision)
        ordered = order_worklist(entries, now, settings.max_wait_s)
        cap = min(limit or settings.max_rows, settings.max_rows)
        return now, [self.summary(i + 1, b, e, now) for i, (b, e) in enumerate(ordered[:cap])]

    def film_out(self, e: StudyRecord, f: FilmRecord) -> FilmOut:
        uid, sop = e.study_uid, f.sop_instance_uid
        state_dir = self.settings.state_dir
        has_heat = state_dir is not None and heatmaps.load_heatmap(state_dir, uid, sop) is not None
        return FilmOut(
            **outcome_fields(f.outcome, FilmOut), sop_instance_uid=sop,
            series_instance_uid=f.series_instance_uid, sop_class_uid=f.sop_class_uid,
            heatmap_available=has_heat,
            image_url=f"/studies/{uid}/films/{sop}/film.png" if f.spool_path else None,
            heatmap_url=f"/studies/{uid}/films/{sop}/heatmap.png" if has_heat and f.spool_path else None,
        )

    def detail(self, uid: str) -> StudyDetailOut:
        settings = self.settings
        e = self.source.get_study(uid)
        if e is None:
            raise HTTPException(status_code=404, detail=f"no study {uid}")
        now = self.clock()
        # Rank within the whole worklist, so the page says where the study stands.
        ordered = order_worklist(self.source.list_studies(None, None), now, settings.max_wait_s)
        rank = next((i + 1 for i, (_, x) in enumerate(ordered) if x.study_uid == uid), 0)
        base = self.summary(rank, band(e, now, settings.max_wait_s), e, now)
        sr: list[dict[str, Any]] | None = None
        said: list[str] = []
        if e.sr_path and Path(e.sr_path).is_file():
            try:
                import pydicom

                from cxr_triage.dicom_node.results.sr_plain import sr_lines, sr_summary

                ds = pydicom.dcmread(e.sr_path)
                sr = [vars(line) for line in sr_lines(ds)]
                said = sr_summary(ds)
            except Exception:  # an unreadable SR must not hide the rest of the page
                log.warning("study page: result SR unreadable", extra={"study_uid": uid}, exc_info=True)
        return StudyDetailOut(
            **base.model_dump(), model_name=e.result.model_name if e.result else None,
            model_version=e.result.model_version if e.result else None,
            films=[self.film_out(e, f) for f in e.films],
            deliveries=[DeliveryOut(**{**asdict(d), "time": utc(d.time)}) for d in e.deliveries],
            result_sr=sr, result_summary=said, feedback=[feedback_out(f) for f in e.feedback],
            priors=[prior_out(p, e) for p in e.priors],
        )
