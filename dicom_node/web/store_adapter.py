"""The node's job store (:class:`~cxr_triage.dicom_node.store.queries.StudyQueries`) seen as a worklist source.

Maps the store's query API (``list_studies``, ``get_study``, ``counts``, ``oldest_pending``)
to :class:`~cxr_triage.dicom_node.web.worklist.StudyEntry` / ``QueueStats``; the adapter never
reads the store's tables itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cxr_triage.contract.sop_classes import COMPREHENSIVE_3D_SR, is_sr_class
from cxr_triage.dicom_node.store.jobs import IDENTITY_FIELDS, IDENTITY_KEYWORDS, identity_from_headers
from cxr_triage.dicom_node.web.worklist import DeliveryEvent, FilmEntry, QueueStats, StudyEntry

#: How many studies one worklist query reads at most (the page shows ``[web] max_rows``).
SCAN_LIMIT = 5000


class StoreWorklist:
    """A :class:`WorklistSource` over the node's job store."""

    def __init__(self, store: Any, state_dir: str | Path | None = None):
        self._store = store
        self.state_dir = Path(state_dir) if state_dir else None

    # ------------------------------------------------------------------ worklist
    def list_studies(self, since: float | None = None, until: float | None = None) -> list[StudyEntry]:
        rows = self._store.list_studies(since=since, until=until, limit=SCAN_LIMIT)
        return [self._with_identity(self._entry(r), r) for r in rows]

    def get_study(self, study_instance_uid: str) -> StudyEntry | None:
        row = self._store.get_study(study_instance_uid)
        if row is None:
            return None
        entry = self._with_identity(self._entry(row), row)
        result = row.get("result") or {}
        by_sop = {f.get("sop_instance_uid"): f for f in result.get("films", []) if isinstance(f, dict)}
        films: list[FilmEntry] = []
        for inst in row.get("instances", []):
            fr = by_sop.pop(inst["sop_instance_uid"], {})
            films.append(_film(fr, inst))
        films.extend(_film(fr, {}) for sop, fr in by_sop.items() if sop)  # results without a row
        entry.films = films
        first = next((f for f in result.get("films", []) if isinstance(f, dict) and f.get("model_version")), None)
        if first:
            entry.model_name, entry.model_version = first.get("model_name"), first.get("model_version")
        if entry.decision == "not_assessable":
            reasons = sorted({f.reason for f in films if f.reason})
            entry.reason = ", ".join(reasons) or None
        # the SR as built (a fallback SR sent to a destination without 3D SR says the same)
        srs = sorted((o for o in row.get("objects", []) if is_sr_class(o.get("sop_class_uid"))),
                     key=lambda o: o.get("sop_class_uid") != COMPREHENSIVE_3D_SR)
        entry.result_path = srs[0]["path"] if srs else None
        entry.deliveries = _deliveries(row.get("deliveries", []))
        entry.feedback = [dict(f) for f in row.get("feedback", [])]
        return entry

    # ------------------------------------------------------------------ feedback
    def record_feedback(self, study_instance_uid: str, verdict: str, finding: str | None,
                        user: str) -> dict[str, Any] | None:
        """Store a radiologist's assessment of the study's current AI result, with the model
        and threshold that made it; None for an unknown study, LookupError before a result."""
        row = self._store.get_study(study_instance_uid)
        if row is None:
            return None
        if row.get("result_id") is None:
            raise LookupError("the study has no AI result yet")
        films = [f for f in (row.get("result") or {}).get("films", []) if isinstance(f, dict)]
        made_by = next((f for f in films if f.get("threshold") is not None), films[0] if films else {})
        fields = dict(decision=row.get("decision"), score=row.get("score"),
                      model_name=made_by.get("model_name"), model_version=made_by.get("model_version"),
                      operating_point=made_by.get("operating_point"), threshold=made_by.get("threshold"))
        fid = self._store.store.add_feedback(study_instance_uid, int(row["result_id"]), verdict, user,
                                             finding=finding, **fields)
        stored: dict[str, Any] = next(f for f in self._store.feedback(study_instance_uid) if f["id"] == fid)
        return stored

    # --------------------------------------------------------------------- stats
    def stats(self) -> QueueStats:
        counts = self._store.counts()
        studies = counts.get("studies", {})
        deliveries = counts.get("deliveries", {})
        oldest = self._store.oldest_pending()
        failures = self._store.failed_attempts()
        latencies = self._store.study_latencies()
        return QueueStats(
            instances_received=int(counts.get("instances", 0)),
            studies_by_decision={k: int(v) for k, v in counts.get("decisions", {}).items()},
            queue_depth=int(studies.get("receiving", 0) + studies.get("processing", 0)
                            + deliveries.get("pending", 0) + deliveries.get("sending", 0)),
            oldest_pending_received_at=oldest["since"] if oldest else None,
            delivery_failures=int(failures),
            dead_letters=int(deliveries.get("dead", 0)),
            latencies_s=[max(0.0, v) for v in latencies],
        )

    def model_info(self) -> dict[str, str]:
        """Name and version of the model behind the latest result (when the node gives none)."""
        text = self._store.latest_result_json()
        if text is None:
            return {}
        try:
            films = json.loads(text).get("films", [])
        except (ValueError, AttributeError):
            return {}
        scored = [f for f in films if isinstance(f, dict) and f.get("model_version")]
        f = next((f for f in scored if f.get("operating_point")), scored[0] if scored else None)
        if not f:
            return {}
        return {"name": str(f.get("model_name") or ""), "version": str(f["model_version"]),
                "operating_point": str(f.get("operating_point") or "")}

    # ------------------------------------------------------------------- helpers
    def _with_identity(self, entry: StudyEntry, r: dict[str, Any]) -> StudyEntry:
        """Accession number, patient ID and name: kept on the study row once triaged; before
        that, read from the header of the study's first spooled instance."""
        if not any(r.get(k) for k in IDENTITY_FIELDS) and r.get("state") in ("receiving", "processing"):
            r = {**r, **_identity_from_spool(self._store.first_instance_path(entry.study_instance_uid))}
        entry.accession_number = r.get("accession_number") or None
        entry.patient_id = r.get("patient_id") or None
        entry.patient_name = r.get("patient_name") or None
        return entry

    @staticmethod
    def _entry(r: dict[str, Any]) -> StudyEntry:
        status = r.get("delivery_status")
        if r.get("state") == "failed" and not r.get("decision"):
            status = "triage_failed"
        return StudyEntry(
            study_instance_uid=r["study_uid"],
            received_at=float(r["first_received_at"]),
            decision=r.get("decision"),
            score=r.get("score"),
            nodule_score=r.get("nodule_score"),
            nodule_flag=r.get("nodule_flag"),
            triaged_at=r.get("triaged_at"),
            delivery_status=status or ("triaging" if r.get("state") == "processing" else "waiting"),
            n_instances=int(r.get("n_instances") or 0),
            amended=bool(r.get("amended")),
            feedback_verdict=r.get("feedback_verdict"),
            feedback_user=r.get("feedback_user"),
        )


def _identity_from_spool(path: str | None) -> dict[str, str]:
    if not path:
        return {}
    try:
        from pydicom import dcmread

        ds = dcmread(path, stop_before_pixels=True, specific_tags=list(IDENTITY_KEYWORDS.values()))
    except Exception:  # noqa: BLE001 - a file still being written or unreadable: nothing to show yet
        return {}
    return identity_from_headers([ds])


def _film(fr: dict[str, Any], inst: dict[str, Any]) -> FilmEntry:
    return FilmEntry(
        sop_instance_uid=str(inst.get("sop_instance_uid") or fr.get("sop_instance_uid") or ""),
        decision=fr.get("decision"),
        score=fr.get("score"),
        threshold=fr.get("threshold"),
        operating_point=fr.get("operating_point"),
        reason=fr.get("reason"),
        reason_detail=fr.get("reason_detail"),
        nodule_score=fr.get("nodule_score"),
        nodule_threshold=fr.get("nodule_threshold"),
        nodule_flag=fr.get("nodule_flag"),
        sop_class_uid=inst.get("sop_class_uid") or fr.get("sop_class_uid"),
        series_instance_uid=inst.get("series_uid") or fr.get("series_instance_uid"),
        spool_path=inst.get("path") or None,
        model_version=fr.get("model_version"),
    )


def _deliveries(rows: list[dict[str, Any]]) -> list[DeliveryEvent]:
    """Every attempt, then the present state of deliveries still owed."""
    out: list[DeliveryEvent] = []
    for d in rows:
        dest = str(d.get("destination", ""))
        what = _object_kind(d.get("sop_class_uid"))
        dest = f"{dest} ({what})" if what else dest
        for a in d.get("attempt_log", []):
            out.append(DeliveryEvent(float(a["at"]), dest, "delivered" if a["ok"] else "failed",
                                     str(a.get("detail") or "")))
        state = d.get("state")
        if state in ("pending", "sending"):
            out.append(DeliveryEvent(float(d.get("next_attempt_at") or d["created_at"]), dest,
                                     "retry scheduled" if d.get("attempts") else "queued", ""))
        elif state == "refused":
            out.append(DeliveryEvent(float(d.get("next_attempt_at") or d["created_at"]), dest, "refused",
                                     str(d.get("last_error") or "refused by the destination")))
        elif state == "dead":
            out.append(DeliveryEvent(float(d["created_at"]), dest, "dead_letter",
                                     str(d.get("last_error") or "gave up after the dead-letter age")))
        elif state == "cancelled":
            out.append(DeliveryEvent(float(d["created_at"]), dest, "cancelled", "superseded by a newer result"))
    out.sort(key=lambda e: e.time)
    return out


def _object_kind(sop_class_uid: Any) -> str:
    """What one delivery carries: the result SR or a summary image (empty: every object of
    a result delivered before deliveries were per object)."""
    if not sop_class_uid:
        return ""
    return "SR" if is_sr_class(str(sop_class_uid)) else "summary image"
