"""Issue 23 class 5: a Secondary Capture that is not a radiograph (a scanned requisition, a
workstation screenshot, a drawing, a synthetic image) is not assessable with the coded reason
``not_radiograph``; a digitised film, a digital-interface capture and a radiograph exported from
a workstation with its CR/DX Modality are read. Through ``predict`` and the node:
tests/reliability/test_reliability_film_faults.py."""

from __future__ import annotations

import pytest
from support.film_faults import nih_film, secondary_capture

from cxr_triage.contract.result import NotAssessable
from cxr_triage.contract.result import NotAssessableReason as R
from cxr_triage.contract.study import PLAIN_REASON
from cxr_triage.dicom_node.results.sr_codes import REASON_CODES
from cxr_triage.inference import gate


@pytest.fixture(scope="module")
def png(shared_data):
    return nih_film(shared_data)


@pytest.mark.parametrize("conversion,modality", [("SD", "OT"), ("SD", "CR"), ("SI", "OT"), ("WSD", "OT"),
                                                 ("DRW", "OT"), ("SYN", "OT"), ("SYN", "DX"), ("sd ", "OT")])
def test_pages_and_screens_are_not_radiographs(png, conversion, modality):
    with pytest.raises(NotAssessable) as err:
        gate.check_header(secondary_capture(png, conversion, modality=modality))
    assert err.value.reason is R.NOT_RADIOGRAPH
    assert "Conversion Type" in err.value.detail


@pytest.mark.parametrize("image_type", [["DERIVED", "SECONDARY", "SCREEN SHOT"],
                                        ["DERIVED", "SECONDARY", "DOCUMENT"], ["ORIGINAL", "PRIMARY", "REPORT"]])
def test_image_type_naming_a_page_or_screen(png, image_type):
    with pytest.raises(NotAssessable) as err:
        gate.check_header(secondary_capture(png, None, image_type))
    assert err.value.reason is R.NOT_RADIOGRAPH and "Image Type" in err.value.detail


@pytest.mark.parametrize("conversion,modality", [("DF", "OT"), ("DI", "CR"), ("DV", "OT"), (None, "OT"),
                                                 ("WSD", "CR"), ("SI", "DX")])
def test_digitised_and_exported_films_are_read(png, conversion, modality):
    gate.check_header(secondary_capture(png, conversion, modality=modality))


def test_the_reason_has_plain_words_and_an_sr_code():
    assert PLAIN_REASON[R.NOT_RADIOGRAPH.value].startswith("not a radiograph")
    assert REASON_CODES[R.NOT_RADIOGRAPH].value == "CXRT111"
