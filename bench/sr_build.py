"""The worker's ``sr`` stage alone (issue 21): ``conform_for_report`` + ``build_result_sr`` for
a one-film study, timed as the worker's stage times it, median and minimum over ``--n`` builds.

The film is the NIH DX sample of the shared data, parsed afresh before each build (as the
worker's read stage does; not timed); the study is suspicious with a nodule/mass score and no
flag, and the metadata are the bundled model's. Prints one JSON object.

    .venv/bin/python bench/sr_build.py --n 50
"""

from __future__ import annotations

import argparse
import statistics
import time

import _common as C
import onnxruntime as ort
from pydicom import Dataset, dcmread

from cxr_triage.contract.model_file import METADATA_KEY, ModelMetadata
from cxr_triage.contract.result import Decision, FilmResult, StudyResult, aggregate_study
from cxr_triage.dicom_node.results.sr import build_result_sr
from cxr_triage.dicom_node.results.sr_header import conform_for_report

FILM = C.ROOT.parent / "shared" / "data" / "dicom" / "nih_gcp_dx_chest_nofinding.dcm"
MODEL = C.ROOT / "model" / "cxr_triage_effnet_lite0.onnx"


def bundled_metadata() -> ModelMetadata:
    session = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    return ModelMetadata.from_json(session.get_modelmeta().custom_metadata_map[METADATA_KEY])


def study_of(ds: Dataset, meta: ModelMetadata) -> StudyResult:
    op, threshold = meta.threshold()
    film = FilmResult(
        decision=Decision.SUSPICIOUS, sop_instance_uid=str(ds.SOPInstanceUID),
        series_instance_uid=str(ds.SeriesInstanceUID), study_instance_uid=str(ds.StudyInstanceUID),
        sop_class_uid=str(ds.SOPClassUID), score=0.8123456789, threshold=threshold, operating_point=op,
        nodule_score=0.0823, nodule_point="score only, no flag", model_name=meta.name,
        model_version=meta.version)
    return aggregate_study(str(ds.StudyInstanceUID), [film])


def one_build_ms(meta: ModelMetadata) -> float:
    ds = dcmread(FILM)
    study = study_of(ds, meta)
    start = time.perf_counter()
    conform_for_report(ds)
    build_result_sr(study, [ds], meta)
    return (time.perf_counter() - start) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50, help="builds timed (after one warm-up)")
    args = ap.parse_args()
    meta = bundled_metadata()
    one_build_ms(meta)
    times = [one_build_ms(meta) for _ in range(args.n)]
    C.emit({"benchmark": "sr_build", "n": args.n, "median_ms": round(statistics.median(times), 2),
            "min_ms": round(min(times), 2), "film": FILM.name})


if __name__ == "__main__":
    main()
