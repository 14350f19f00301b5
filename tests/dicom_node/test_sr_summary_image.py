"""The summary Secondary Capture: valid (dciodvfy), in the source study, visibly marked, with
the heatmap only where the film was called suspicious and only from a model whose heatmap
passed validation, and the nodule/mass flag when the model has that output."""

from __future__ import annotations

import dataclasses

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, JPEGLSLossless, RLELossless, generate_uid
from support.sr_checks import make_film, reread, save, sc_dciodvfy_errors

from cxr_triage.config import ConfigError, load_config
from cxr_triage.contract.model_file import ModelMetadata
from cxr_triage.contract.result import Decision, FilmResult, NotAssessableReason, aggregate_study
from cxr_triage.dicom_node.results.summary_image import (
    SERIES_PREFIX,
    build_summary_image,
    build_summary_images,
    summary_images_if_enabled,
)
from cxr_triage.dicom_node.results.summary_render import nodule_text, render_summary

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                 "StudyInstanceUID", "AccessionNumber", "StudyDate", "StudyTime")


@pytest.fixture(scope="module")
def meta() -> ModelMetadata:
    return ModelMetadata(name="cxr_triage_test_model", version="0.3.1",
                         thresholds={"sens_0.98": 0.2875}, heatmap_validated=True)


def blob(size: int = 16) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    c = (size - 1) / 2
    return np.exp(-((yy - c) ** 2 + (xx - c) ** 2) / (size * 2.0)).astype(np.float32)


def result(ds, decision, meta, score=None, reason=None, heatmap=None) -> FilmResult:
    return FilmResult(decision=decision, sop_instance_uid=str(ds.SOPInstanceUID), score=score,
                      threshold=meta.thresholds["sens_0.98"], operating_point="sens_0.98",
                      reason=reason, reason_detail="gate said so" if reason else None,
                      heatmap=heatmap)


def colourfulness(rgb: np.ndarray) -> int:
    rgb = rgb.astype(np.int16)
    return int(np.abs(rgb[..., 0] - rgb[..., 1]).max() + np.abs(rgb[..., 1] - rgb[..., 2]).max())


@pytest.mark.parametrize(
    "name, decision, reason",
    [
        ("siim_cr_chest_pa", Decision.SUSPICIOUS, None),
        ("siim_cr_chest_pa_MONOCHROME1_variant", Decision.LIKELY_NORMAL, None),
        ("nih_gcp_dx_chest_nofinding", Decision.LIKELY_NORMAL, None),
        ("highdicom_dx_canine_thorax_mono1", Decision.NOT_ASSESSABLE,
         NotAssessableReason.NON_HUMAN),
    ],
)
def test_real_samples_valid_and_in_source_study(name, decision, reason, sample_dicoms, meta,
                                                tmp_path):
    source = pydicom.dcmread(sample_dicoms[name])
    film = result(source, decision, meta, score=None if reason else 0.5, reason=reason,
                  heatmap=blob())
    image = build_summary_image(film, source, meta, series_uid=generate_uid())
    path = save(image, tmp_path / "sc.dcm")
    assert sc_dciodvfy_errors(path) == []
    back = reread(path)
    assert back.SOPClassUID == SECONDARY_CAPTURE
    for keyword in PATIENT_STUDY:
        assert str(back.get(keyword, "")) == str(source.get(keyword, "")), keyword
    assert back.BurnedInAnnotation == "YES"
    label = decision.value.replace("_", " ").upper()
    # a not-assessable reason is stated as in the SR ("AI triage: NOT ASSESSABLE (not human) ...")
    assert back.SeriesDescription.startswith((f"{SERIES_PREFIX}: {label}", f"AI triage: {label} ("))
    assert "not for diagnosis" in back.SeriesDescription and len(back.SeriesDescription) <= 64
    assert back.SeriesDate and back.SeriesTime
    # no empty Laterality: the source's when it has one, else none (the chest is unpaired)
    assert back.get("Laterality", "x") != ""
    if source.get("Laterality"):
        assert back.Laterality == source.Laterality
    assert back.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert back.PhotometricInterpretation == "RGB" and back.pixel_array.ndim == 3
    if source.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50":
        assert back.LossyImageCompression == "01"


def test_heatmap_only_on_suspicious_films(meta):
    source = make_film(generate_uid(), generate_uid(), 1, size=128)
    pixels = np.tile(np.linspace(0, 1, 128, dtype=np.float32), (128, 1))
    flat = np.ones((8, 8), dtype=np.float32)
    suspicious = render_summary(result(source, Decision.SUSPICIOUS, meta, 0.9, heatmap=flat),
                                pixels, meta)
    normal = render_summary(result(source, Decision.LIKELY_NORMAL, meta, 0.1, heatmap=flat),
                            pixels, meta)
    middle = suspicious.shape[0] // 2  # inside the film panel, between banner and footer
    assert colourfulness(suspicious[middle]) > 30
    assert colourfulness(normal[middle]) == 0
    # The banner (decision text, warning) is there in both: coloured text on black.
    assert colourfulness(normal[: normal.shape[0] // 10]) > 100


def test_heatmap_not_drawn_when_the_model_heatmap_is_not_validated(meta, tmp_path):
    unvalidated = dataclasses.replace(meta, heatmap_validated=False)
    source = make_film(generate_uid(), generate_uid(), 1, size=128)
    pixels = np.tile(np.linspace(0, 1, 128, dtype=np.float32), (128, 1))
    film = result(source, Decision.SUSPICIOUS, meta, 0.9, heatmap=np.ones((8, 8), dtype=np.float32))
    shown, hidden = render_summary(film, pixels, meta), render_summary(film, pixels, unvalidated)
    middle = shown.shape[0] // 2
    assert colourfulness(shown[middle]) > 30 and colourfulness(hidden[middle]) == 0
    image = build_summary_image(film, source, unvalidated, series_uid=generate_uid(), pixels=pixels)
    assert "heatmap" not in image.DerivationDescription
    assert "heatmap" in build_summary_image(film, source, meta, series_uid=generate_uid(),
                                            pixels=pixels).DerivationDescription
    assert sc_dciodvfy_errors(save(image, tmp_path / "sc.dcm")) == []


def test_nodule_mass_flag_in_the_text(meta):
    source = make_film(generate_uid(), generate_uid(), 1, size=128)
    pixels = np.tile(np.linspace(0, 1, 128, dtype=np.float32), (128, 1))
    plain = result(source, Decision.LIKELY_NORMAL, meta, 0.1)
    flagged = dataclasses.replace(plain, nodule_score=0.7123, nodule_threshold=0.31, nodule_flag=True)
    quiet = dataclasses.replace(plain, nodule_score=0.2, nodule_threshold=0.31, nodule_flag=False)
    assert nodule_text(plain) is None
    assert nodule_text(flagged) == "Nodule/mass: FLAGGED (score 0.712 >= 0.310)"
    assert nodule_text(quiet) == "Nodule/mass: not flagged (score 0.200 < 0.310)"
    orange = np.array([255, 160, 40], dtype=np.uint8)

    def has_orange(rgb: np.ndarray) -> bool:
        return bool((rgb == orange).all(axis=-1).any())

    without, with_flag, with_quiet = (render_summary(f, pixels, meta) for f in (plain, flagged, quiet))
    assert has_orange(with_flag) and not has_orange(without) and not has_orange(with_quiet)
    # one more banner line when the model has the output, flagged or not
    assert with_flag.shape[0] == with_quiet.shape[0] > without.shape[0]


def test_film_that_cannot_be_decoded_still_gets_a_summary(meta, tmp_path):
    source = make_film(generate_uid(), generate_uid(), 1)
    source.PixelData = b"\x00" * 10  # truncated
    film = result(source, Decision.NOT_ASSESSABLE, meta,
                  reason=NotAssessableReason.UNDECODABLE)
    image = build_summary_image(film, source, meta, series_uid=generate_uid())
    assert sc_dciodvfy_errors(save(image, tmp_path / "sc.dcm")) == []


def test_study_series_and_config_switch(meta):
    study_uid = generate_uid()
    sources = [make_film(study_uid, generate_uid(), i) for i in (1, 2)]
    films = [result(sources[0], Decision.SUSPICIOUS, meta, 0.8, heatmap=blob()),
             result(sources[1], Decision.LIKELY_NORMAL, meta, 0.1)]
    study = aggregate_study(study_uid, films)
    images = build_summary_images(study, sources, meta)
    assert [im.InstanceNumber for im in images] == [1, 2]
    assert len({im.SeriesInstanceUID for im in images}) == 1
    assert images[0].SeriesInstanceUID not in {s.SeriesInstanceUID for s in sources}
    assert {im.StudyInstanceUID for im in images} == {study_uid}
    # the series carries the study's decision, on every image of it
    assert {im.SeriesDescription for im in images} == {
        "AI triage summary: SUSPICIOUS - research, not for diagnosis"}

    cfg = load_config(environ={})
    assert len(summary_images_if_enabled(cfg, study, sources, meta)) == 2
    off = cfg.replace(delivery={"summary_image": False})
    assert summary_images_if_enabled(off, study, sources, meta) == []


# -- compression (issue 14): lossless JPEG-LS by default, RLE, or JPEG with its lossy history --
def _summary(meta, compression=None, source=None):
    source = source if source is not None else make_film(generate_uid(), generate_uid(), 1, size=300)
    pixels = np.tile(np.linspace(0, 1, 300, dtype=np.float32), (300, 1))
    film = result(source, Decision.SUSPICIOUS, meta, 0.9, heatmap=blob())
    kwargs = {} if compression is None else {"compression": compression}
    image = build_summary_image(film, source, meta, series_uid=generate_uid(), pixels=pixels, **kwargs)
    return image, render_summary(film, pixels, meta)


@pytest.mark.parametrize("compression, syntax", [(None, JPEGLSLossless), ("jpeg-ls", JPEGLSLossless),
                                                 ("rle", RLELossless), ("none", ExplicitVRLittleEndian)])
def test_summary_image_is_compressed_losslessly_by_default(meta, tmp_path, compression, syntax):
    image, rgb = _summary(meta, compression)
    path = save(image, tmp_path / "sc.dcm")
    assert sc_dciodvfy_errors(path) == []
    back = reread(path)
    assert back.file_meta.TransferSyntaxUID == syntax
    assert back.PhotometricInterpretation == "RGB"
    assert np.array_equal(back.pixel_array, rgb)                    # lossless: every pixel back
    assert "LossyImageCompression" not in back                      # nothing lossy happened
    if syntax == JPEGLSLossless:
        assert path.stat().st_size < rgb.nbytes / 2


def test_jpeg_summary_declares_its_lossy_history(meta, tmp_path):
    image, rgb = _summary(meta, "jpeg")
    path = save(image, tmp_path / "sc.dcm")
    assert sc_dciodvfy_errors(path) == []
    back = reread(path)
    assert back.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    assert back.PhotometricInterpretation == "YBR_FULL_422"
    assert back.LossyImageCompression == "01"
    assert back.LossyImageCompressionMethod == "ISO_10918_1"
    assert float(back.LossyImageCompressionRatio) == pytest.approx(rgb.nbytes / len(image.PixelData), rel=0.01)
    assert float(back.LossyImageCompressionRatio) > 2
    # a film that was itself lossy: both steps, in order, each with its ratio
    lossy = make_film(generate_uid(), generate_uid(), 1, size=300)
    lossy.LossyImageCompression, lossy.LossyImageCompressionMethod = "01", "ISO_15444_1"
    lossy.LossyImageCompressionRatio = "8"
    image, _ = _summary(meta, "jpeg", source=lossy)
    back = reread(save(image, tmp_path / "sc2.dcm"))
    assert list(back.LossyImageCompressionMethod) == ["ISO_15444_1", "ISO_10918_1"]
    assert [float(r) for r in back.LossyImageCompressionRatio][0] == 8.0
    assert sc_dciodvfy_errors(tmp_path / "sc2.dcm") == []
    # losslessly compressed, a lossy film's summary keeps the film's history only
    image, _ = _summary(meta, "jpeg-ls", source=lossy)
    assert (image.LossyImageCompression, image.LossyImageCompressionMethod) == ("01", "ISO_15444_1")


def test_summary_image_compression_is_configured(meta):
    with pytest.raises(ConfigError, match="summary_image_compression"):
        load_config(environ={"CXR_TRIAGE__DELIVERY__SUMMARY_IMAGE_COMPRESSION": "png"})
    study_uid = generate_uid()
    sources = [make_film(study_uid, generate_uid(), 1)]
    study = aggregate_study(study_uid, [result(sources[0], Decision.LIKELY_NORMAL, meta, 0.1)])
    cfg = load_config(environ={})
    assert cfg.delivery.summary_image_compression == "jpeg-ls"
    (im,) = summary_images_if_enabled(cfg.replace(delivery={"summary_image_compression": "rle"}), study,
                                      sources, meta)
    assert im.file_meta.TransferSyntaxUID == RLELossless
    with pytest.raises(ValueError, match="compression"):
        build_summary_image(study.films[0], sources[0], meta, series_uid=generate_uid(), compression="gif")


def test_summary_shows_the_film_decoded_for_scoring(sample_dicoms, meta, tmp_path, monkeypatch):
    """Each film decoded once per study: a Triager asked to keep the pixels leaves them on the
    film result, and the summary image shows those without decoding the source again."""
    from cxr_triage.dicom_node.results import summary_image
    from cxr_triage.inference.reader import read_film

    source = pydicom.dcmread(sample_dicoms["nih_gcp_dx_chest_nofinding"])
    film = result(source, Decision.LIKELY_NORMAL, meta, score=0.1)
    film.pixels = read_film(source).pixels
    assert "pixels" not in film.to_dict()

    def decode_again(ds):
        raise AssertionError("the summary decoded the film a second time")

    monkeypatch.setattr(summary_image, "film_pixels", decode_again)
    kept = build_summary_image(film, source, meta, series_uid=generate_uid())
    monkeypatch.undo()
    decoded = build_summary_image(dataclasses.replace(film, pixels=None), source, meta,
                                  series_uid=generate_uid())
    assert np.array_equal(kept.pixel_array, decoded.pixel_array)


def test_triager_keeps_pixels_only_when_asked(sample_dicoms, tiny_model):
    from cxr_triage.inference.pipeline import Triager

    cfg = load_config(environ={}).replace(inference={"model_path": str(tiny_model), "threads": 1})
    ds = pydicom.dcmread(sample_dicoms["nih_gcp_dx_chest_nofinding"])
    assert Triager(cfg).triage_dataset(ds, "a").pixels is None
    kept = Triager(cfg, keep_pixels=True).triage_dataset(ds, "b").pixels
    assert kept is not None and kept.dtype == np.float32 and kept.shape == (int(ds.Rows), int(ds.Columns))


@pytest.mark.parametrize("reason", list(NotAssessableReason))
def test_not_assessable_summary_states_the_srs_reason(reason, meta):
    """Issue 24 re-run: the SR said "AI triage: NOT ASSESSABLE (lateral view) - not for diagnosis",
    the summary image no reason ("AI triage summary" left no room): both now say the same."""
    from cxr_triage.dicom_node.results.sr import SERIES_PREFIX as SR_PREFIX
    from cxr_triage.dicom_node.results.sr_content import study_reasons
    from cxr_triage.dicom_node.results.sr_header import header_description

    study_uid = generate_uid()
    source = make_film(study_uid, generate_uid(), 1)
    study = aggregate_study(study_uid, [result(source, Decision.NOT_ASSESSABLE, meta, reason=reason)])
    [image] = build_summary_images(study, [source], meta)
    sr_text = header_description(SR_PREFIX, study.decision, study_reasons(study))
    assert image.SeriesDescription == sr_text and sr_text.startswith("AI triage: NOT ASSESSABLE (")
