"""The HTML pages: the worklist, a study, and the login form."""

from __future__ import annotations

from importlib import resources
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from cxr_triage.dicom_node.web.auth import LOGIN_REQUIRED, current_user, safe_next
from cxr_triage.dicom_node.web.deps import Settings, Templates, Views
from cxr_triage.dicom_node.web.feedback import FINDINGS, VERDICTS, give_feedback
from cxr_triage.dicom_node.web.views import DECISION_FILTERS, form_date, local_time, person_name, wait_text
from cxr_triage.dicom_node.web.worklist import PLAIN_DECISION, PLAIN_REASON

router = APIRouter()


def build_templates() -> Jinja2Templates:
    """The pages' Jinja templates, with the plain-words helpers they use."""
    pkg = resources.files("cxr_triage.dicom_node.web")
    templates = Jinja2Templates(directory=str(pkg / "templates"))
    templates.env.globals.update(plain_decision=PLAIN_DECISION, plain_reason=PLAIN_REASON, local_time=local_time,
                                 wait_text=wait_text, person_name=person_name)
    return templates


@router.get("/", response_class=HTMLResponse, include_in_schema=False, dependencies=LOGIN_REQUIRED)
def page_worklist(request: Request, views: Views, settings: Settings, templates: Templates,
                  date_from: str = "", date_to: str = "") -> Response:
    decision = [d for d in request.query_params.getlist("decision") if d in DECISION_FILTERS]
    day_from, day_to = form_date(date_from), form_date(date_to)  # the form sends "" for none
    now, rows = views.worklist(decision, day_from, day_to, None)
    return templates.TemplateResponse(request, "worklist.html", {
        "rows": rows, "now": now, "decision": decision, "filters": DECISION_FILTERS,
        "date_from": day_from.isoformat() if day_from else "",
        "date_to": day_to.isoformat() if day_to else "",
        "refresh_s": settings.refresh_s, "max_wait_min": settings.max_wait_s / 60.0,
    })


@router.get("/studies/{study_uid}", response_class=HTMLResponse, include_in_schema=False,
            dependencies=LOGIN_REQUIRED)
def page_study(request: Request, study_uid: str, views: Views, settings: Settings,
               templates: Templates) -> Response:
    study = views.detail(study_uid)
    return templates.TemplateResponse(request, "study.html", {
        "s": study, "refresh_s": settings.refresh_s, "user": current_user(request),
        "findings": FINDINGS, "verdicts": VERDICTS})


@router.post("/studies/{study_uid}/feedback", include_in_schema=False, dependencies=LOGIN_REQUIRED)
async def page_feedback(request: Request, study_uid: str) -> Response:
    """The study page's accept/reject form; back to the study page (its feedback section)."""
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    give_feedback(request, study_uid, (form.get("verdict") or [""])[0], (form.get("finding") or [""])[0])
    return RedirectResponse(f"/studies/{quote(study_uid)}#feedback", status_code=303)


@router.get("/login", response_class=HTMLResponse, include_in_schema=False)
def login_form(request: Request, templates: Templates, next: str = "/", failed: int = 0) -> Response:
    return templates.TemplateResponse(request, "login.html", {"next": safe_next(next), "failed": bool(failed)})
