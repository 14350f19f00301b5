"""Rows of the job store -> the typed read model (:mod:`cxr_triage.contract.study`).

The one place that knows both the row layout the read side selects (:mod:`.queries`) and the
read model: the study summary row, the result JSON (``StudyResult.to_dict``), instances,
result objects, deliveries with their attempts, and feedback rows.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterable

from cxr_triage.contract.result import Decision, Escalation, NotAssessableReason, PriorStudy
from cxr_triage.contract.sop_classes import COMPREHENSIVE_3D_SR, is_sr_class
from cxr_triage.contract.study import (
    DeliveryEvent,
    FeedbackRecord,
    FilmRecord,
    Identity,
    Outcome,
    ResultPart,
    StudyRecord,
)
from cxr_triage.dicom_node.store.identity import IDENTITY_FIELDS, IDENTITY_KEYWORDS, identity_from_headers
from cxr_triage.dicom_node.store.schema import FAILED, PROCESSING, RECEIVING


def study_record(row: dict[str, Any], detail: dict[str, Any] | None = None, *,
                 spool_header: Callable[[str], str | None] | None = None) -> StudyRecord:
    """A summary row of :meth:`.queries.StudyQueries.list_studies` -> a :class:`StudyRecord`;
    with ``detail`` (:meth:`.queries.StudyQueries.get_study`'s instances, result, objects,
    deliveries, feedback) also the films, the delivery history and every assessment.
    ``spool_header``: study UID -> the path of its first spooled instance, whose header gives
    the identity of a study still being received (the row keeps it only once triaged)."""
    detail = detail or {}
    films = [f for f in (detail.get("result") or {}).get("films", []) if isinstance(f, dict)]
    objects = detail.get("objects", [])
    return StudyRecord(
        study_uid=row["study_uid"], state=row["state"], received_at=float(row["first_received_at"]),
        last_received_at=row.get("last_received_at"), generation=int(row.get("generation") or 1),
        n_instances=int(row.get("n_instances") or 0),
        identity=_identity(row, spool_header),
        result=_result_part(row, films, objects), result_id=row.get("result_id"),
        triaged_at=row.get("triaged_at"), amended=bool(row.get("amended")), sr_path=_sr_path(objects),
        delivery_status=_delivery_status(row), feedback_verdict=row.get("feedback_verdict"),
        feedback_user=row.get("feedback_user"), last_error=row.get("last_error"),
        films=tuple(_films(films, detail.get("instances", []))),
        deliveries=tuple(delivery_events(detail.get("deliveries", []))),
        feedback=tuple(feedback_record(f) for f in detail.get("feedback", [])),
        priors=tuple(PriorStudy.from_dict(p) for p in (detail.get("result") or {}).get("priors") or ()
                     if isinstance(p, dict)),
    )


def _identity(row: dict[str, Any], spool_header: Callable[[str], str | None] | None) -> Identity:
    found: dict[str, Any] = {k: row.get(k) for k in IDENTITY_FIELDS}
    if not any(found.values()) and row.get("state") in (RECEIVING, PROCESSING) and spool_header:
        found = identity_from_spool(spool_header(row["study_uid"]))
    return Identity(**{k: v or None for k, v in found.items()})


def identity_from_spool(path: str | None) -> dict[str, str]:
    """Accession number, patient ID and name from one spooled instance's header ({} when the
    file is missing, still being written or unreadable)."""
    if not path:
        return {}
    try:
        from pydicom import dcmread  # pydicom only for studies still being received

        ds = dcmread(path, stop_before_pixels=True, specific_tags=list(IDENTITY_KEYWORDS.values()))
    except Exception:  # noqa: BLE001 - a file still being written or unreadable: nothing to show yet
        return {}
    return identity_from_headers([ds])


def feedback_record(row: dict[str, Any]) -> FeedbackRecord:
    """A ``feedback`` row -> :class:`FeedbackRecord`."""
    fields: dict[str, Any] = {k: row.get(k) for k in FeedbackRecord.__dataclass_fields__}
    return FeedbackRecord(**fields)


def model_of(result_json: str | None) -> dict[str, str]:
    """Name, version and operating point of the model behind a stored result (empty when the
    result names none or is unreadable)."""
    try:
        films = json.loads(result_json or "{}").get("films", [])
    except (ValueError, AttributeError):
        return {}
    scored = [f for f in films if isinstance(f, dict) and f.get("model_version")]
    f = next((f for f in scored if f.get("operating_point")), scored[0] if scored else None)
    if not f:
        return {}
    return {"name": str(f.get("model_name") or ""), "version": str(f["model_version"]),
            "operating_point": str(f.get("operating_point") or "")}


def made_by(films: list[dict[str, Any]]) -> dict[str, Any]:
    """The film whose model and operating point made the study result: the first with a
    threshold, else the first film (empty when there is none)."""
    return next((f for f in films if f.get("threshold") is not None), films[0] if films else {})


def _result_part(row: dict[str, Any], films: list[dict[str, Any]],
                 objects: list[dict[str, Any]]) -> ResultPart | None:
    if row.get("result_id") is None or not row.get("decision"):
        return None
    by = made_by(films)
    named = next((f for f in films if f.get("model_version")), {})
    outcome = Outcome(
        decision=Decision(row["decision"]), score=row.get("score"), threshold=by.get("threshold"),
        operating_point=by.get("operating_point"),
        reasons=tuple(NotAssessableReason(r) for r in row.get("reasons") or ()),
        nodule_score=row.get("nodule_score"), nodule_threshold=by.get("nodule_threshold"),
        nodule_flag=None if row.get("nodule_flag") is None else bool(row["nodule_flag"]),
        nodule_point=next((f["nodule_point"] for f in films if f.get("nodule_point")), None))
    srs = _srs(objects)
    escalation = row.get("escalation")
    return ResultPart(outcome=outcome, model_name=named.get("model_name"),
                      model_version=named.get("model_version"),
                      sr_uid=srs[0]["sop_instance_uid"] if srs else None,
                      escalation=Escalation.from_dict(escalation) if isinstance(escalation, dict) else None)


def escalation_of(result_json: str | None) -> dict[str, Any] | None:
    """The escalation of a stored result (``StudyResult.to_dict``'s "escalation": reason and
    the prior used), None when the result was not raised by a prior or is unreadable."""
    try:
        escalation = json.loads(result_json or "{}").get("escalation")
    except (ValueError, AttributeError):
        return None
    return escalation if isinstance(escalation, dict) else None


def reasons_of(result_json: str | None) -> list[str]:
    """The not-assessable reason codes of a stored result's films, distinct, in film order
    ([] for none or an unreadable result)."""
    try:
        films = json.loads(result_json or "{}").get("films", [])
    except (ValueError, AttributeError):
        return []
    return [r.value for r in _reasons(f for f in films if isinstance(f, dict))]


def _reasons(films: Iterable[dict[str, Any]]) -> tuple[NotAssessableReason, ...]:
    """The distinct not-assessable reasons of the films, in film order."""
    out: list[NotAssessableReason] = []
    for f in films:
        if f.get("reason") and NotAssessableReason(f["reason"]) not in out:
            out.append(NotAssessableReason(f["reason"]))
    return tuple(out)


def _film_outcome(f: dict[str, Any]) -> Outcome | None:
    if not f.get("decision"):
        return None
    return Outcome(decision=Decision(f["decision"]), score=f.get("score"), threshold=f.get("threshold"),
                   operating_point=f.get("operating_point"), reasons=_reasons([f]),
                   reason_detail=f.get("reason_detail"), nodule_score=f.get("nodule_score"),
                   nodule_threshold=f.get("nodule_threshold"), nodule_flag=f.get("nodule_flag"),
                   nodule_point=f.get("nodule_point"))


def _film(f: dict[str, Any], inst: dict[str, Any]) -> FilmRecord:
    return FilmRecord(
        sop_instance_uid=str(inst.get("sop_instance_uid") or f.get("sop_instance_uid") or ""),
        outcome=_film_outcome(f), sop_class_uid=inst.get("sop_class_uid") or f.get("sop_class_uid"),
        series_instance_uid=inst.get("series_uid") or f.get("series_instance_uid"),
        spool_path=inst.get("path") or None, model_version=f.get("model_version"))


def _films(results: list[dict[str, Any]], instances: list[dict[str, Any]]) -> list[FilmRecord]:
    """Each received instance with its film result, then results without an instance row."""
    by_sop = {f.get("sop_instance_uid"): f for f in results}
    out = [_film(by_sop.pop(inst["sop_instance_uid"], {}), inst) for inst in instances]
    return out + [_film(f, {}) for sop, f in by_sop.items() if sop]


def _srs(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The result's SR objects, the SR as built (Comprehensive 3D SR) first (a fallback SR sent
    to a destination without 3D SR says the same)."""
    return sorted((o for o in objects if is_sr_class(o.get("sop_class_uid"))),
                  key=lambda o: o.get("sop_class_uid") != COMPREHENSIVE_3D_SR)


def _sr_path(objects: list[dict[str, Any]]) -> str | None:
    srs = _srs(objects)
    return str(srs[0]["path"]) if srs else None


def _delivery_status(row: dict[str, Any]) -> str:
    status: str | None = row.get("delivery_status")
    if row.get("state") == FAILED and not row.get("decision"):
        return "triage_failed"
    return status or ("triaging" if row.get("state") == PROCESSING else "waiting")


def delivery_events(rows: list[dict[str, Any]]) -> list[DeliveryEvent]:
    """Every attempt, then the present state of deliveries still owed, in time order."""
    out: list[DeliveryEvent] = []
    for d in rows:
        dest = str(d.get("destination", ""))
        what = _object_kind(d.get("sop_class_uid"))
        dest = f"{dest} ({what})" if what else dest
        out += [DeliveryEvent(float(a["at"]), dest, "delivered" if a["ok"] else "failed",
                              str(a.get("detail") or "")) for a in d.get("attempt_log", [])]
        now_state = _present_state(d, dest)
        if now_state is not None:
            out.append(now_state)
    out.sort(key=lambda e: e.time)
    return out


def _present_state(d: dict[str, Any], dest: str) -> DeliveryEvent | None:
    state, due = d.get("state"), float(d.get("next_attempt_at") or d["created_at"])
    if state in ("pending", "sending"):
        return DeliveryEvent(due, dest, "retry scheduled" if d.get("attempts") else "queued", "")
    if state == "refused":
        return DeliveryEvent(due, dest, "refused", str(d.get("last_error") or "refused by the destination"))
    if state == "dead":
        return DeliveryEvent(float(d["created_at"]), dest, "dead_letter",
                             str(d.get("last_error") or "gave up after the dead-letter age"))
    if state == "cancelled":
        return DeliveryEvent(float(d["created_at"]), dest, "cancelled", "superseded by a newer result")
    return None


def _object_kind(sop_class_uid: Any) -> str:
    """What one delivery carries: the result SR or a summary image (empty: every object of
    a result delivered before deliveries were per object)."""
    if not sop_class_uid:
        return ""
    return "SR" if is_sr_class(str(sop_class_uid)) else "summary image"
