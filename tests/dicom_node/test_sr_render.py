"""What a generic SR renderer shows: dcmtk's dsr2html must label every value with its concept
name (ContinuityOfContent SEPARATE; CONTINUOUS ran them together unlabelled), show rounded
numbers, and put the decision first. The HTML and a Chromium headless screenshot of it are
saved to ``$CXR_TRIAGE_ARTEFACTS/sr_render`` (else the test's tmp dir) for a person to look at."""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from support.artefacts import artefact_dir
from support.sr_checks import make_film, save

from cxr_triage.contract.model_file import ModelMetadata
from cxr_triage.contract.result import Decision, FilmResult, NotAssessableReason, aggregate_study
from cxr_triage.dicom_node.results.sr import build_result_sr

DSR2HTML = Path("/usr/bin/dsr2html")
META = ModelMetadata(name="cxr_triage_test_model", version="0.3.1",
                     thresholds={"sens_0.98": 0.2875})
_NUMBERS_ONLY = re.compile(r"^[-+]?\d[\d.\s:/+-]*$")


def _lines(page: str) -> list[str]:
    text = re.sub(r"<[^>]+>", "\n", page)
    return [line for line in (html.unescape(t).strip() for t in text.splitlines()) if line]


def _walk(items):
    for item in items:
        yield item
        yield from _walk(item.get("ContentSequence", []))


def _render(tmp_path: Path, name: str, films_spec) -> tuple[pydicom.Dataset, list[str], Path]:
    study_uid = generate_uid()
    sources = [make_film(study_uid, generate_uid(), i + 1) for i in range(len(films_spec))]
    # (decision, score, reason[, nodule/mass score]): the nodule/mass threshold is 0.31
    films = [FilmResult(decision=d, sop_instance_uid=str(s.SOPInstanceUID), score=sc,
                        threshold=None if r else 0.2875, operating_point=None if r else "sens_0.98",
                        reason=r, reason_detail=f"gate refused: {r.value}" if r else None,
                        nodule_score=nod[0] if nod else None, nodule_threshold=0.31 if nod else None,
                        nodule_flag=nod[0] >= 0.31 if nod else None)
             for s, (d, sc, r, *nod) in zip(sources, films_spec)]
    out = artefact_dir(tmp_path, "sr_render")
    path = save(build_result_sr(aggregate_study(study_uid, films), sources, META),
                out / f"{name}.dcm")
    proc = subprocess.run([str(DSR2HTML), str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    page = out / f"{name}.html"
    page.write_text(proc.stdout)
    return pydicom.dcmread(path), _lines(proc.stdout), page


@pytest.mark.skipif(not DSR2HTML.exists(), reason="dcmtk dsr2html not installed")
@pytest.mark.parametrize("name, films", [
    ("suspicious", [(Decision.SUSPICIOUS, 0.8123456789, None),
                    (Decision.LIKELY_NORMAL, 0.0731, None),
                    (Decision.NOT_ASSESSABLE, None, NotAssessableReason.LATERAL_VIEW)]),
    ("not_assessable", [(Decision.NOT_ASSESSABLE, None, NotAssessableReason.TOO_SMALL)]),
    ("nodule_mass", [(Decision.SUSPICIOUS, 0.8123456789, None, 0.123456789),
                     (Decision.LIKELY_NORMAL, 0.0731, None, 0.7123456789),
                     (Decision.NOT_ASSESSABLE, None, NotAssessableReason.LATERAL_VIEW)]),
])
def test_dsr2html_labels_every_value(name, films, tmp_path):
    sr, lines, page = _render(tmp_path, name, films)
    # every number and code appears right after its concept name ("Name:" then the value)
    missing = []
    for item in _walk(sr.ContentSequence):
        concept = item.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in item else ""
        if item.ValueType == "NUM":
            value = f"{item.MeasuredValueSequence[0].NumericValue} 1"
            assert len(str(item.MeasuredValueSequence[0].NumericValue).split(".")[-1]) <= 4
        elif item.ValueType == "CODE":
            value = item.ConceptCodeSequence[0].CodeMeaning
        else:
            continue
        pairs = {(a, b) for a, b in zip(lines, lines[1:])}
        labelled = any(a == f"{concept}:" and b.startswith(value) for a, b in pairs) or any(
            re.fullmatch(rf".*: {re.escape(concept)} = {re.escape(value)}.*", line)
            for line in lines)
        if not labelled:
            missing.append((concept, value))
    assert not missing, missing
    if name == "nodule_mass":  # the added finding is labelled too (checked above), per film and study
        assert sum(line == "AI nodule/mass flag:" for line in lines) + sum(
            ": AI nodule/mass flag = " in line for line in lines) == 3, lines
    # no run of bare numbers in the content (dcmtk's footer names its version): each numeric
    # line follows its label
    title = lines.index("Imaging Measurement Report")
    body = lines[title:next(i for i, t in enumerate(lines) if "DCMTK" in t and i > title)]
    for before, line in zip(body, body[1:]):
        if _NUMBERS_ONLY.match(line) and not re.match(r"^\d{4}-\d\d-\d\d", line):
            assert before.endswith(":"), (before, line)
    # the decision is the first thing in the content, and in the series line of the header
    content = [line for line in lines[title + 1:] if line.endswith(":")]
    assert content[0] == "AI triage decision:", content[:3]
    decision = aggregate_study("x", [FilmResult(decision=d, score=s) for d, s, *_ in films]).decision
    assert any(line.startswith("AI triage: " + decision.value.replace("_", " ").upper())
               for line in lines[:title])

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium:
        shot = page.with_suffix(".png")
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                        "--hide-scrollbars", f"--screenshot={shot}", "--window-size=1000,2600",
                        page.resolve().as_uri()], capture_output=True, timeout=120)
        assert shot.exists() and shot.stat().st_size > 10_000
