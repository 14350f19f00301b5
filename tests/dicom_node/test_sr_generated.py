"""SR and summary images for a study wrapped from real NIH films by film_to_dicom (CR, DX and
SC; compressed transfer syntaxes; MONOCHROME1), read back from disk as the node would."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, RLELossless, generate_uid
from support.sr_checks import dciodvfy_errors, dsrdump_tree, save, sc_dciodvfy_errors

from cxr_triage.contract.model_file import ModelMetadata
from cxr_triage.contract.result import Decision, FilmResult, aggregate_study
from cxr_triage.dicom_node.results.sr import build_result_sr
from cxr_triage.dicom_node.results.sr_reader import read_result_sr
from cxr_triage.dicom_node.results.summary_image import build_summary_images

film_to_dicom = pytest.importorskip("cxr_triage.dicom_node.tools.film_to_dicom")

VARIANTS = [
    dict(sop_class="CR", transfer_syntax_uid=JPEGLSLossless, photometric="MONOCHROME1"),
    dict(sop_class="DX_PRES", transfer_syntax_uid=RLELossless),
    dict(sop_class="SC", transfer_syntax_uid=ExplicitVRLittleEndian, bits_stored=8),
]


def test_wrapped_nih_study(shared_data, tmp_path):
    meta = ModelMetadata(name="cxr_triage_test_model", version="0.3.1",
                         thresholds={"sens_0.98": 0.3})
    pngs = sorted((shared_data / "nih-cxr14" / "images").glob("*.png"))[: len(VARIANTS)]
    study_uid = generate_uid()
    sources = []
    for i, (png, variant) in enumerate(zip(pngs, VARIANTS), start=1):
        ds = film_to_dicom.png_to_dicom(png, study_uid=study_uid, series_uid=generate_uid(),
                                        patient_name="Test^Wrapped", instance_number=i,
                                        **variant)
        sources.append(pydicom.dcmread(save(ds, tmp_path / f"film{i}.dcm")))
    decisions = [Decision.SUSPICIOUS, Decision.LIKELY_NORMAL, Decision.LIKELY_NORMAL]
    scores = [0.55, 0.12, 0.29]
    films = [
        FilmResult(decision=d, sop_instance_uid=str(s.SOPInstanceUID), score=sc, threshold=0.3,
                   operating_point="sens_0.98", heatmap=np.random.default_rng(0).random((7, 7)))
        for s, d, sc in zip(sources, decisions, scores)
    ]
    study = aggregate_study(study_uid, films)

    sr_path = save(build_result_sr(study, sources, meta), tmp_path / "sr.dcm")
    assert dciodvfy_errors(sr_path) == []
    assert "TID 1500" in dsrdump_tree(sr_path)
    parsed = read_result_sr(pydicom.dcmread(sr_path))
    assert parsed.decision is Decision.SUSPICIOUS
    assert parsed.score == max(scores)
    assert [g.decision for g in parsed.films] == decisions
    assert sorted(parsed.evidence_sop_instance_uids) == sorted(str(s.SOPInstanceUID)
                                                               for s in sources)
    # The evidence keeps each film's own series.
    series = {item.SeriesInstanceUID
              for st in pydicom.dcmread(sr_path).CurrentRequestedProcedureEvidenceSequence
              for item in st.ReferencedSeriesSequence}
    assert series == {str(s.SeriesInstanceUID) for s in sources}

    for i, image in enumerate(build_summary_images(study, sources, meta)):
        assert sc_dciodvfy_errors(save(image, tmp_path / f"sc{i}.dcm")) == []
