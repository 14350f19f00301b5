"""A picture of the result that any PACS viewer shows: one Secondary Capture per film.

Why Secondary Capture and not a GSPS: every viewer displays an SC image, while presentation
states are applied inconsistently (often not at all, or only on request), and a colour heatmap
would need a Blending/Colour Softcopy PS that few viewers support. The cost, accepted: the
film's pixels are duplicated (downscaled to at most 1024 px) and the text is burned in, so
the image carries Burned In Annotation YES and its own series, "AI triage summary", whose
description says it is not for diagnosis. Enabled by ``[delivery] summary_image``.

This module is the DICOM object (highdicom ``SCImage``: header copied from the film like the
SR's, ``sr_header``). The picture is ``summary_render``; the film it shows is the one decoded
for scoring (``FilmResult.pixels``) when the pipeline kept it, so a film is decoded once per
study. The encoding (``[delivery] summary_image_compression``, lossless JPEG-LS by default)
and the lossy history are ``summary_compression``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import highdicom as hd
import numpy as np
from pydicom import Dataset

from cxr_triage.contract.model_file import ModelMetadata
from cxr_triage.contract.result import FilmResult, StudyResult
from cxr_triage.dicom_node.results.sr import AMENDED_SUFFIX, Amendment
from cxr_triage.dicom_node.results.sr import SERIES_PREFIX as SR_SERIES_PREFIX
from cxr_triage.dicom_node.results.sr_content import study_reasons
from cxr_triage.dicom_node.results.sr_header import (
    SOFTWARE_NAME,
    header_description,
    mark_equipment,
    source_headers,
)
from cxr_triage.dicom_node.results.summary_compression import (
    DEFAULT_COMPRESSION,
    add_lossy_step,
    compression_syntax,
    copy_lossy_history,
)
from cxr_triage.dicom_node.results.summary_render import film_pixels, render_summary, shows_heatmap

if TYPE_CHECKING:
    from cxr_triage.config import Config

SERIES_DESCRIPTION = "AI triage summary - not for diagnosis"  # decision unknown
SERIES_PREFIX = "AI triage summary"  # + ": DECISION (reason) - not for diagnosis"
DEFAULT_SERIES_NUMBER = 991


def build_summary_images(
    study: StudyResult,
    sources: Sequence[Dataset],
    meta: ModelMetadata,
    *,
    series_uid: str | None = None,
    series_number: int = DEFAULT_SERIES_NUMBER,
    amends: Amendment | None = None,
    compression: str = DEFAULT_COMPRESSION,
) -> list[hd.sc.SCImage]:
    """One summary image per film of the study, all in one new series; an amended result's
    (``amends``) continue the replaced result's series after its last Instance Number, say
    "amended" in the Series Description and carry an AMENDED line."""
    by_uid = {str(s.SOPInstanceUID): s for s in sources}
    prefix, first, suffix = SERIES_PREFIX, 1, AMENDED_SUFFIX if amends is not None else ""
    if amends is not None and amends.sc_series_uid:
        series_uid, first = amends.sc_series_uid, amends.sc_last_instance_number + 1
    series_uid = series_uid or hd.UID()
    # one series per study: its description carries the study's decision and, as the SR's, its reason
    description = header_description(prefix + suffix, study.decision, study_reasons(study),
                                     fallback_prefix=SR_SERIES_PREFIX + suffix)
    images = []
    for number, film in enumerate(study.films, start=first):
        source = by_uid.get(str(film.sop_instance_uid))
        if source is None:
            raise ValueError(f"film without a matching source dataset: {film.sop_instance_uid}")
        images.append(
            build_summary_image(film, source, meta, series_uid=series_uid,
                                series_number=series_number, instance_number=number,
                                series_description=description, amended=amends is not None,
                                compression=compression)
        )
    return images


def summary_images_if_enabled(
    cfg: Config,
    study: StudyResult,
    sources: Sequence[Dataset],
    meta: ModelMetadata,
    **kwargs: Any,
) -> list[hd.sc.SCImage]:
    """``build_summary_images`` when ``[delivery] summary_image`` is on, else nothing."""
    if not cfg.delivery.summary_image:
        return []
    kwargs.setdefault("compression", cfg.delivery.summary_image_compression)
    return build_summary_images(study, sources, meta, **kwargs)


def build_summary_image(
    film: FilmResult,
    source: Dataset,
    meta: ModelMetadata,
    *,
    series_uid: str,
    instance_number: int = 1,
    series_number: int = DEFAULT_SERIES_NUMBER,
    sop_instance_uid: str | None = None,
    pixels: np.ndarray | None = None,
    series_description: str | None = None,
    amended: bool = False,
    compression: str = DEFAULT_COMPRESSION,
) -> hd.sc.SCImage:
    """The Secondary Capture for one film. ``pixels`` (float32 (H, W) [0, 1] MONOCHROME2):
    the film to show; by default ``film.pixels`` (kept by the pipeline when it decoded the
    film for scoring), else the source decoded here (``summary_render.film_pixels``; None
    when it cannot be: the summary then shows the result without the film).
    ``series_description`` defaults to one carrying this film's decision (a study's series
    carries the study's). ``compression``: a key of
    :data:`~cxr_triage.dicom_node.results.summary_compression.COMPRESSIONS` (ValueError
    otherwise)."""
    transfer_syntax, photometric, lossy_method = compression_syntax(compression)
    if pixels is None:
        pixels = film.pixels if film.pixels is not None else film_pixels(source)
    rgb = render_summary(film, pixels, meta, amended=amended)
    orientation = _orientation(source)
    with warnings.catch_warnings():
        # highdicom's person-name warnings quote the patient's name: keep PHI out of logs.
        warnings.filterwarnings("ignore", message=".*person name.*", category=UserWarning)
        image = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=source_headers([source])[0],
            pixel_array=rgb,
            photometric_interpretation=photometric,
            transfer_syntax_uid=transfer_syntax,
            bits_allocated=8,
            coordinate_system="PATIENT",
            series_instance_uid=series_uid,
            series_number=series_number,
            sop_instance_uid=sop_instance_uid or hd.UID(),
            instance_number=instance_number,
            manufacturer=meta.manufacturer or SOFTWARE_NAME,
            patient_orientation=orientation or ("L", "F"),
            series_description=series_description or header_description(
                SERIES_PREFIX, film.decision, [film.reason] if film.reason else [], fallback_prefix=SR_SERIES_PREFIX),
            manufacturer_model_name=SOFTWARE_NAME,
            software_versions=f"{meta.name} {meta.version}",
        )
    mark_equipment(image, meta)  # package and model versions, as in the SR
    if orientation is None:
        # Type 2: unknown, rather than a guess (highdicom set it, typed as a list of values)
        image["PatientOrientation"].value = ""
    _copy_anatomy(source, image)
    image.BurnedInAnnotation = "YES"
    image.DerivationDescription = (
        f"AI triage summary of the referenced film by {meta.name} {meta.version}; "
        + ("resampled, text and heatmap burned in" if shows_heatmap(film, pixels, meta)
           else "resampled, text burned in")
    )
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    image.SourceImageSequence = [ref]
    copy_lossy_history(source, image)
    if lossy_method is not None:
        add_lossy_step(image, lossy_method, rgb.nbytes)
    return image


def _copy_anatomy(source: Dataset, image: Dataset) -> None:
    """Body Part Examined, and Laterality (Type 2C, only for paired body parts): the source's
    when it has one, never an empty value (the chest is unpaired)."""
    body_part = str(source.get("BodyPartExamined", "") or "")
    if body_part:
        image.BodyPartExamined = body_part
    if str(source.get("Laterality", "") or ""):
        image.Laterality = source.Laterality
    elif "Laterality" in image:
        del image.Laterality


def _orientation(source: Dataset) -> tuple[str, str] | None:
    """The source's Patient Orientation when it has two values, else None."""
    value = source.get("PatientOrientation")
    if value is not None and not isinstance(value, str) and len(value) == 2:
        return str(value[0]), str(value[1])
    return None
