"""The JSON API (``/api/studies``, ``/api/studies/{uid}``) and the operations routes
(``/metrics``, ``/healthz``)."""

from __future__ import annotations

import datetime as dt

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from cxr_triage.dicom_node.web import metrics
from cxr_triage.dicom_node.web.auth import LOGIN_REQUIRED
from cxr_triage.dicom_node.web.deps import Registry, Settings, Views
from cxr_triage.dicom_node.web.feedback import give_feedback
from cxr_triage.dicom_node.web.schemas import FeedbackIn, FeedbackOut, StudyDetailOut, WorklistOut
from cxr_triage.dicom_node.web.views import DECISION_FILTERS, feedback_out, utc

router = APIRouter()


@router.get("/api/studies", response_model=WorklistOut, tags=["api"], dependencies=LOGIN_REQUIRED,
            summary="Studies in reading order")
def api_studies(
    views: Views,
    settings: Settings,
    decision: list[str] | None = Query(None, description=f"keep only these ({', '.join(DECISION_FILTERS)})"),
    date_from: dt.date | None = Query(None, description="first day received (local calendar, inclusive)"),
    date_to: dt.date | None = Query(None, description="last day received (inclusive)"),
    limit: int | None = Query(None, ge=1, le=10000),
) -> WorklistOut:
    """Overdue studies (past the maximum wait) first, then suspicious, not assessable, being
    triaged, likely normal; oldest first within each band."""
    now, rows = views.worklist(decision, date_from, date_to, limit)
    return WorklistOut(generated_at=utc(now), max_wait_minutes=settings.max_wait_s / 60.0,
                       count=len(rows), studies=rows)


@router.get("/api/studies/{study_uid}", response_model=StudyDetailOut, tags=["api"], dependencies=LOGIN_REQUIRED,
            summary="One study with per-image results, SR content and delivery history",
            responses={404: {"description": "unknown study"}})
def api_study(study_uid: str, views: Views) -> StudyDetailOut:
    return views.detail(study_uid)


@router.post("/api/studies/{study_uid}/feedback", response_model=FeedbackOut, tags=["api"],
             dependencies=LOGIN_REQUIRED, status_code=201,
             summary="Accept or reject the study's AI result (needs a named login)",
             responses={403: {"description": "no named user"}, 404: {"description": "unknown study"},
                        409: {"description": "no AI result yet"}})
def api_feedback(study_uid: str, body: FeedbackIn, request: Request) -> FeedbackOut:
    return feedback_out(give_feedback(request, study_uid, body.verdict, body.finding or ""))


@router.get("/metrics", tags=["operations"], dependencies=LOGIN_REQUIRED, response_class=Response,
            summary="Prometheus metrics (text exposition format)")
def metrics_endpoint(registry: Registry) -> Response:
    return Response(metrics.render(registry), media_type=metrics.CONTENT_TYPE)


@router.get("/healthz", tags=["operations"], include_in_schema=True, summary="Liveness")
def healthz() -> dict[str, str]:
    return {"status": "ok"}
