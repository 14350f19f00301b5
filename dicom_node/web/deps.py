"""FastAPI dependencies that read the app's shared state from ``request.app.state``.

``create_app`` sets ``source``, ``settings``, ``registry``, ``templates`` and ``clock`` there;
the routers take them through these, not through closures.
"""

from __future__ import annotations

from typing import Annotated, Callable, cast

from fastapi import Depends, Request
from fastapi.templating import Jinja2Templates
from prometheus_client import CollectorRegistry

from cxr_triage.dicom_node.web.settings import WebSettings
from cxr_triage.dicom_node.web.views import StudyViews
from cxr_triage.dicom_node.web.worklist import WorklistSource


def get_source(request: Request) -> WorklistSource:
    return cast('WorklistSource', request.app.state.source)


def get_settings(request: Request) -> WebSettings:
    return cast('WebSettings', request.app.state.settings)


def get_registry(request: Request) -> CollectorRegistry:
    return cast('CollectorRegistry', request.app.state.registry)


def get_templates(request: Request) -> Jinja2Templates:
    return cast('Jinja2Templates', request.app.state.templates)


def get_clock(request: Request) -> Callable[[], float]:
    return cast('Callable[[], float]', request.app.state.clock)


def get_views(request: Request) -> StudyViews:
    return StudyViews(get_source(request), get_settings(request), get_clock(request))


Source = Annotated[WorklistSource, Depends(get_source)]
Settings = Annotated[WebSettings, Depends(get_settings)]
Registry = Annotated[CollectorRegistry, Depends(get_registry)]
Templates = Annotated[Jinja2Templates, Depends(get_templates)]
Views = Annotated[StudyViews, Depends(get_views)]
