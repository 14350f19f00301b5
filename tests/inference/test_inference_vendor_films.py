"""Genuine vendor films from pydicom-data (the ``test`` extra, pinned): reader, gate, pipeline.

* ``RG1_*``: Philips CR chest PA, MONOCHROME1, 15 bits stored, window 15000/30000; uncompressed
  (UNCR), JPEG 2000 lossless (J2KR), JPEG 2000 lossy (J2KI) and the lossy one decompressed
  (UNCI). Must be assessable.
* ``RG3_*``: Fuji CR extremity (Body Part Examined EXTREMITY): must be refused as non_chest.

pydicom finds them through pydicom-data's ``pydicom.data.external_sources`` entry point; with
``download=False`` nothing is fetched at test time (pydicom also checks each file's hash).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from support.dcmtk_oracle import assert_like_dcmtk, dcmtk_display

from cxr_triage.config import load_config
from cxr_triage.contract.result import Decision, NotAssessable, NotAssessableReason
from cxr_triage.inference.gate import check_film, check_header
from cxr_triage.inference.reader import read_film

RG1 = ("RG1_UNCR.dcm", "RG1_UNCI.dcm", "RG1_J2KR.dcm", "RG1_J2KI.dcm")
RG3 = ("RG3_UNCR.dcm", "RG3_J2KR.dcm", "RG3_J2KI.dcm")


def vendor_film(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    assert path is not None, f"{name} not found: install the test extra (pydicom-data)"
    return Path(str(path))


@pytest.fixture(scope="module")
def rg1() -> dict[str, np.ndarray]:
    return {name: read_film(vendor_film(name)).pixels for name in RG1}


def test_vendor_films_ship_inside_the_installed_package(monkeypatch):
    import data_store  # pydicom-data's package
    from pydicom.data import data_manager

    def no_network(*args, **kwargs):
        raise AssertionError("get_testdata_file tried to download")

    monkeypatch.setattr(data_manager, "data_path_with_download", no_network)
    root = Path(data_store.__file__).resolve().parent
    for name in (*RG1, *RG3):
        path = Path(str(get_testdata_file(name))).resolve()  # even with download allowed
        assert root in path.parents, path          # from the wheel, not a download cache
        assert path.stat().st_size > 100_000       # real pixel data, not an LFS pointer


def test_rg1_decodes_alike_in_every_encoding(rg1):
    ref = rg1["RG1_UNCR.dcm"]
    assert ref.shape == (1955, 1841) and ref.dtype == np.float32
    np.testing.assert_array_equal(rg1["RG1_J2KR.dcm"], ref)          # lossless
    np.testing.assert_array_equal(rg1["RG1_J2KI.dcm"], rg1["RG1_UNCI.dcm"])  # the same lossy pixels
    err = np.abs(rg1["RG1_J2KI.dcm"] - ref)
    assert err.mean() < 0.005 and np.corrcoef(rg1["RG1_J2KI.dcm"].ravel(), ref.ravel())[0, 1] > 0.999


@pytest.mark.parametrize("name", ["RG1_UNCR.dcm", "RG1_UNCI.dcm", "RG3_UNCR.dcm"])
def test_vendor_film_display_is_dcmtks(name):
    """MONOCHROME1 and the file's window, against dcm2pnm (dcmtk here has no JPEG 2000 codec,
    so the uncompressed files are compared; the J2K ones equal them above)."""
    path = vendor_film(name)
    assert_like_dcmtk(read_film(path).pixels, dcmtk_display(path, "+Wi", "1"))


def test_rg1_is_bone_bright(rg1):
    """MONOCHROME1 inverted back: the mediastinum (centre) is brighter than the lungs beside it."""
    film = rg1["RG1_UNCR.dcm"]
    h, w = film.shape
    centre = film[h // 3: 2 * h // 3, w // 2 - w // 20: w // 2 + w // 20].mean()
    lungs = np.mean([film[h // 3: 2 * h // 3, w // 4 - w // 20: w // 4 + w // 20].mean(),
                     film[h // 3: 2 * h // 3, 3 * w // 4 - w // 20: 3 * w // 4 + w // 20].mean()])
    assert centre > lungs + 0.1, (centre, lungs)


@pytest.mark.parametrize("name", RG1)
def test_rg1_passes_the_gate(name, rg1):
    check_header(dcmread(vendor_film(name)))
    from cxr_triage.inference.reader import Film

    check_film(Film(rg1[name]))


@pytest.mark.parametrize("name", RG3)
def test_rg3_extremity_is_non_chest(name):
    with pytest.raises(NotAssessable) as exc:
        check_header(dcmread(vendor_film(name)))
    assert exc.value.reason is NotAssessableReason.NON_CHEST and "EXTREMITY" in exc.value.detail


def test_vendor_films_through_the_bundled_model():
    from cxr_triage.inference.pipeline import Triager
    from cxr_triage.paths import bundled_model_path

    if not bundled_model_path().exists():
        pytest.skip("no bundled model in this checkout")
    triager = Triager(load_config(None, environ={}), threads=1)
    chest, extremity = triager.triage_paths([vendor_film("RG1_J2KR.dcm"), vendor_film("RG3_UNCR.dcm")])
    assert chest.decision in (Decision.LIKELY_NORMAL, Decision.SUSPICIOUS), chest.reason_detail
    assert chest.score is not None and 0.0 <= chest.score <= 1.0
    assert extremity.decision is Decision.NOT_ASSESSABLE and extremity.reason is NotAssessableReason.NON_CHEST
