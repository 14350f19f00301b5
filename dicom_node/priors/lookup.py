"""The same patient's earlier studies: this node's own results (the job store) and, with
``[priors] query_destination``, the PACS's CR/DX studies (C-FIND, :mod:`.cfind`).

Identity (PS3.3 C.7.1.1): the same Patient ID, and the same Issuer of Patient ID where both
studies name one (:meth:`PatientKey.same_id`). A prior with that ID whose name or birth date
differs is left out and logged with UIDs and the names of the differing attributes only.
For the node's results the issuer, birth date and Study Date come from the header of the
result SR it made (copied from the films); ``triaged_at`` stands in for a missing date.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import replace
from typing import Any

from pydicom import dcmread

from cxr_triage.config import Config, parse_destination
from cxr_triage.contract.decision import parse_da
from cxr_triage.contract.patient import PatientKey
from cxr_triage.contract.result import Decision, PriorStudy
from cxr_triage.dicom_node.priors.cfind import FoundStudy, PriorQueryError, find_studies
from cxr_triage.dicom_node.store.queries import StudyQueries

log = logging.getLogger(__name__)

_SR_KEYS = ["PatientID", "IssuerOfPatientID", "PatientName", "PatientBirthDate", "StudyDate"]


class PriorLookup:
    """``find``: the earlier studies of a study's patient, matched and merged, newest first."""

    def __init__(self, cfg: Config, queries: StudyQueries):
        self.cfg = cfg
        self.queries = queries

    def find(self, study_uid: str, patient: PatientKey, on: dt.date) -> list[PriorStudy]:
        """The node's results and the PACS's studies of ``patient`` dated on or before ``on``
        (the study's date), other than ``study_uid``; one entry per study ("node+pacs" when
        both know it). A PACS that cannot be asked is logged; the node's results still count."""
        node = {p.study_uid: p for p in self._node_priors(study_uid, patient)}
        pacs = self._pacs_priors(study_uid, patient, on)
        merged = [_merge(node.pop(p.study_uid, None), p) for p in pacs] + list(node.values())
        earlier = [p for p in merged if (parse_da(p.study_date) or on) <= on]
        return sorted(earlier, key=lambda p: p.study_date, reverse=True)

    def _node_priors(self, study_uid: str, patient: PatientKey) -> list[PriorStudy]:
        out = []
        for row in self.queries.patient_results(patient.patient_id, exclude_study_uid=study_uid):
            key, study_date = _sr_identity(row)
            if _same_patient(study_uid, row["study_uid"], patient, key):
                out.append(PriorStudy(
                    study_uid=row["study_uid"], source="node", study_date=study_date,
                    accession_number=row.get("accession_number") or "",
                    decision=Decision(row["decision"]) if row.get("decision") else None,
                    nodule_flag=row.get("nodule_flag"), escalated=bool(row.get("escalated")),
                    sr_uid=row.get("sr_uid"),
                    sr_series_uid=row.get("sr_series_uid"), sr_class_uid=row.get("sr_class_uid")))
        return out

    def _pacs_priors(self, study_uid: str, patient: PatientKey, on: dt.date) -> list[PriorStudy]:
        settings = self.cfg.priors
        if not settings.query_destination:
            return []
        since = on - dt.timedelta(days=round(365.25 * settings.years))
        try:
            found = find_studies(parse_destination(settings.query_destination), self.cfg.node.ae_title,
                                 patient, since, settings.query_timeout_s)
        except (PriorQueryError, OSError, RuntimeError, ValueError) as exc:
            log.warning("prior studies: PACS not asked", extra={
                "study_uid": study_uid, "destination": settings.query_destination,
                "error": f"{type(exc).__name__}: {exc}"})
            return []
        return [_from_pacs(s) for s in found
                if s.study_uid and s.study_uid != study_uid
                and _same_patient(study_uid, s.study_uid, patient, s.patient)]


def _same_patient(study_uid: str, prior_uid: str, patient: PatientKey, other: PatientKey) -> bool:
    """Same Patient ID (and issuer); a name or birth-date mismatch is logged and excluded."""
    if not patient.same_id(other):
        return False
    differ = patient.mismatches(other)
    if differ:
        log.warning("prior study left out: same Patient ID, other patient attributes", extra={
            "study_uid": study_uid, "prior_study_uid": prior_uid, "differing": differ})
        return False
    return True


def _sr_identity(row: dict[str, Any]) -> tuple[PatientKey, str]:
    """The prior's patient and Study Date from its result SR's header; from the study row
    (Patient ID and name, the day it was triaged) when the SR cannot be read."""
    fallback = PatientKey(patient_id=row.get("patient_id") or "", name=row.get("patient_name") or "")
    day = dt.datetime.fromtimestamp(row["triaged_at"]).strftime("%Y%m%d") if row.get("triaged_at") else ""
    if not row.get("sr_path"):
        return fallback, day
    try:
        ds = dcmread(row["sr_path"], stop_before_pixels=True, specific_tags=_SR_KEYS)
    except (OSError, ValueError) as exc:
        log.warning("prior result SR not readable", extra={"prior_study_uid": row["study_uid"],
                                                           "error": type(exc).__name__})
        return fallback, day
    return PatientKey.from_header(ds) or fallback, str(ds.get("StudyDate", "") or "") or day


def _from_pacs(found: FoundStudy) -> PriorStudy:
    return PriorStudy(study_uid=found.study_uid, source="pacs", study_date=found.study_date,
                      accession_number=found.accession_number, modalities=found.modalities,
                      description=found.description)


def _merge(node: PriorStudy | None, pacs: PriorStudy) -> PriorStudy:
    """The PACS's study with this node's result of it, if the node made one."""
    if node is None:
        return pacs
    return replace(node, source="node+pacs", modalities=pacs.modalities, description=pacs.description,
                   study_date=node.study_date or pacs.study_date,
                   accession_number=node.accession_number or pacs.accession_number)
