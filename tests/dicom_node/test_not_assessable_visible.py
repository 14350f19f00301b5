"""Why a study is not assessable, where a person looks (issue 24): the SR's Series Description
names every reason within LO's 64 characters, and `cxr-triage status` lists each study with its
accession number and reasons."""

from __future__ import annotations

import pytest

from cxr_triage.contract.result import Decision, NotAssessableReason
from cxr_triage.dicom_node.results import sr_codes
from cxr_triage.dicom_node.results.sr_header import header_description, short_reason
from cxr_triage.dicom_node.service.cli import _study_line


@pytest.mark.parametrize("reason", list(NotAssessableReason))
def test_sr_series_description_names_the_reason(reason: NotAssessableReason) -> None:
    text = header_description("AI triage", Decision.NOT_ASSESSABLE, [reason])
    named = {sr_codes.REASON_CODES[reason].meaning.lower(), short_reason(reason)}
    assert any(f"({n})" in text for n in named), text
    assert len(text) <= 64 and text.endswith("not for diagnosis")


def test_every_reason_has_a_short_name_that_fits() -> None:
    assert all(len(short_reason(r)) <= 16 and short_reason(r).isascii() for r in NotAssessableReason)


def test_status_line_shows_accession_and_reason() -> None:
    study = {"first_received_at": None, "state": "triaged", "decision": "not_assessable", "score": None,
             "n_instances": 2, "delivery_status": "delivered", "accession_number": "RIS-77",
             "study_uid": "1.2.3", "reasons": ["lateral_view", "too_small"], "nodule_flag": None}
    line = _study_line(study)
    assert "acc RIS-77" in line and line.rstrip().endswith("1.2.3  (lateral view, too small)")
    assert "acc -" in _study_line({**study, "accession_number": None, "reasons": []})
