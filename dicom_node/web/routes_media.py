"""The images: a study's thumbnail, a film as PNG and its heatmap overlay."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import Response
from PIL import Image

from cxr_triage.dicom_node.store import heatmaps
from cxr_triage.dicom_node.web import film_render
from cxr_triage.dicom_node.web.auth import LOGIN_REQUIRED
from cxr_triage.dicom_node.web.deps import Settings, Source
from cxr_triage.dicom_node.web.views import display_film
from cxr_triage.dicom_node.web.worklist import WorklistSource

router = APIRouter(dependencies=LOGIN_REQUIRED)


def png(img: Image.Image) -> Response:
    return Response(film_render.png_bytes(img), media_type="image/png",
                    headers={"Cache-Control": "private, max-age=300"})


def film_path(source: WorklistSource, uid: str, sop: str) -> str:
    """The received file of one film of the study; 404 when there is none on disk."""
    e = source.get_study(uid)
    f = next((f for f in (e.films if e else []) if f.sop_instance_uid == sop), None)
    if f is None or not f.spool_path or not Path(f.spool_path).is_file():
        raise HTTPException(status_code=404, detail="no such image")
    return f.spool_path


@router.get("/studies/{study_uid}/thumbnail.png", include_in_schema=False)
def thumbnail(study_uid: str, source: Source, settings: Settings,
              size: int = Query(160, ge=32, le=1024)) -> Response:
    e = source.get_study(study_uid)
    f = display_film(e) if e else None
    if f is None or not f.spool_path or not Path(f.spool_path).is_file():
        raise HTTPException(status_code=404, detail="no image")
    heat = heatmaps.load_heatmap(settings.state_dir, study_uid, f.sop_instance_uid) if settings.state_dir else None
    return png(film_render.composite(film_render.film_image(f.spool_path, size), heat))


@router.get("/studies/{study_uid}/films/{sop_uid}/film.png", include_in_schema=False)
def film_png(study_uid: str, sop_uid: str, source: Source,
             size: int = Query(768, ge=32, le=1024)) -> Response:
    return png(film_render.film_image(film_path(source, study_uid, sop_uid), size))


@router.get("/studies/{study_uid}/films/{sop_uid}/heatmap.png", include_in_schema=False)
def heatmap_png(study_uid: str, sop_uid: str, source: Source, settings: Settings,
                size: int = Query(768, ge=32, le=1024)) -> Response:
    path = film_path(source, study_uid, sop_uid)
    heat = heatmaps.load_heatmap(settings.state_dir, study_uid, sop_uid) if settings.state_dir else None
    if heat is None:
        raise HTTPException(status_code=404, detail="no heatmap for this image")
    film = film_render.film_image(path, size)
    return png(film_render.heat_overlay(heat, film.size))

