"""The worklist in a real headless browser (Debian chromium + chromedriver via Selenium),
against a running node that received real sample films from dcmtk storescu and triaged them.
A radiologist logs in with a per-user token, reads the worklist and a study, and rejects the
AI result with the finding seen; the feedback is stored and exported by ``cxr-triage
reconcile --feedback``.

Saves the screenshots worklist.png and study.png (and the exported feedback_discordant.csv)
to the test artefacts folder (``support.artefacts``: ``$CXR_TRIAGE_ARTEFACTS/web`` or
``test-artifacts/web``).
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import DCMTK_BIN, free_port
from pydicom.uid import generate_uid
from support.artefacts import artefact_dir
from support.web_node import CANINE, screen_films

from cxr_triage.config import load_config
from cxr_triage.dicom_node.store.audit import read_audit
from cxr_triage.dicom_node.web.worklist import order_worklist

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
MAX_WAIT_S = 8.0
RADIOLOGIST, TOKEN = "dr.test", "browser-test-token-0123456789"


def _storescu(port: int, files: list[Path]) -> None:
    subprocess.run([str(DCMTK_BIN / "storescu"), "-aet", "TESTSCU", "-aec", "CXRTRIAGE",
                    "127.0.0.1", str(port), *map(str, files)], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def running_node(tmp_path_factory, tiny_model, shared_data, sample_dicoms):
    """A node with the worklist, fed by storescu: one likely-normal study first, then (after
    the maximum wait) suspicious, not assessable and likely-normal studies."""
    from cxr_triage.dicom_node.service.node import Node
    from cxr_triage.dicom_node.tools.film_to_dicom import png_to_dicom, write_dicom
    from cxr_triage.inference.pipeline import Triager

    root = tmp_path_factory.mktemp("browsernode")
    cfg = load_config(environ={}).replace(
        node={"state_dir": str(root / "state"), "host": "127.0.0.1", "port": free_port(),
              "quiet_period_s": 0.3},
        inference={"model_path": str(tiny_model), "threads": 1},
        web={"port": 0, "max_wait_likely_normal_min": MAX_WAIT_S / 60.0, "refresh_s": 600,
             "user_tokens": [f"{RADIOLOGIST}:{TOKEN}"]},
    )
    films = screen_films(Triager(cfg), shared_data, 2, 2)

    def wrap(png: Path) -> Path:
        n = len(list(root.glob("*.dcm"))) + 1        # each study its own made-up patient and order
        ds = png_to_dicom(png, study_uid=generate_uid(), patient_name=f"Browsertest^Patient{n}",
                          patient_id=f"BT-{n:03d}", accession_number=f"BTACC{n:04d}")
        return write_dicom(ds, root / f"{generate_uid()}.dcm")

    first_normal = wrap(films["likely_normal"][0])
    later = [wrap(p) for p in films["suspicious"]] + [wrap(films["likely_normal"][1]), sample_dicoms[CANINE]]
    node = Node(cfg).start()
    web = node.web                   # the node starts its worklist itself ([web] enabled)
    assert web is not None and web.url.startswith("http://127.0.0.1:")
    try:
        _storescu(node.port, [first_normal])
        assert node.wait_idle(30)
        time.sleep(MAX_WAIT_S + 0.5)   # the first study has now waited past the maximum
        _storescu(node.port, later)
        assert node.wait_idle(30)
        yield node, web
    finally:
        node.stop()


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail("Debian chromium and chromium-driver are needed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = Path(__import__("tempfile").mkdtemp(prefix="cxr-chromium-"))
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", "--window-size=1400,1000"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


# Waiting for the page, never holding a page's elements: every check below re-finds what it
# looks at on each poll (or reads it in one script run), so a page replaced by a navigation
# (filter form, study link) or re-rendered is simply looked at again. Under load chromedriver
# reports a vanished element as a stale reference, or as an "unknown error" ("Node with given
# id does not belong to the document", "Execution context was destroyed"): both mean "not
# there yet" while waiting.
WAIT_S = 30.0
_TRANSIENT = ("does not belong to the document", "execution context was destroyed",
              "cannot find context with specified id", "stale element", "no such element")


def _wait(driver, condition, what: str, timeout: float = WAIT_S):
    """WebDriverWait on ``condition(driver)``, tolerating a page that is being replaced; the
    timeout names what was awaited and the last value or error seen."""
    from selenium.common.exceptions import (
        NoSuchElementException,
        StaleElementReferenceException,
        TimeoutException,
        WebDriverException,
    )
    from selenium.webdriver.support.ui import WebDriverWait

    last: list[object] = [None]

    def poll(d):
        try:
            value = condition(d)
        except (StaleElementReferenceException, NoSuchElementException) as exc:
            last[0] = exc
            return False
        except WebDriverException as exc:
            if not any(t in str(exc).lower() for t in _TRANSIENT):
                raise
            last[0] = exc
            return False
        last[0] = value
        return value

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1,
                             ignored_exceptions=(StaleElementReferenceException, NoSuchElementException)
                             ).until(poll)
    except TimeoutException:
        pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}; last seen: {last[0]!r}")


def _loaded(driver) -> bool:
    return driver.execute_script("return document.readyState") == "complete"


def _navigate(driver, css: str, what: str) -> None:
    """Click the element ``css`` (found now) that loads a new page, and wait until the new
    page has replaced the old one and finished loading. The old page is told apart by a mark
    set on its window, not by holding one of its elements."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By

    driver.execute_script("window.__cxrOldPage = true;")
    try:
        driver.find_element(By.CSS_SELECTOR, css).click()
    except WebDriverException:  # the navigation the click started can be reported as an error
        pass
    _wait(driver, lambda d: d.execute_script(
        "return window.__cxrOldPage !== true && document.readyState === 'complete'"), what)


def _worklist(driver) -> dict | None:
    """The worklist page as data, read in one script run (no element kept): the page's time
    and its rows, or None while the page is loading."""
    return driver.execute_script("""
        if (document.readyState !== 'complete') return null;
        const table = document.getElementById('worklist');
        if (!table) return null;
        return {now: table.dataset.now, rows: Array.from(table.querySelectorAll('tr.row')).map(
            r => ({uid: r.dataset.uid, band: r.dataset.band, decision: r.dataset.decision}))};""")


def _wait_worklist(driver, check, what: str) -> dict:
    """Wait until the worklist page shows rows for which ``check(rows)`` holds."""
    return _wait(driver, lambda d: (page := _worklist(d)) is not None and check(page["rows"]) and page, what)


def _images_loaded(driver, css: str) -> list:
    """naturalWidth of every image matching ``css`` once all have loaded, else []."""
    widths = driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]))"
        ".map(i => i.complete ? i.naturalWidth : 0)", css)
    return widths if widths and all(w and w > 0 for w in widths) else []


def _displayed(driver, css: str) -> bool:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, css).is_displayed()


def _text(driver, element_id: str) -> str:
    return driver.execute_script(
        "const e = document.getElementById(arguments[0]); return e ? e.innerText : null", element_id) or ""


def test_worklist_order_heatmap_toggle_and_study_page(browser, running_node, tmp_path):  # browser starts first
    from selenium.webdriver.common.by import By

    artefacts = artefact_dir(tmp_path, "web")
    node, web = running_node
    # a named login: the worklist sends the browser to the login form first
    browser.get(web.url + "/")
    _wait(browser, lambda d: "/login" in d.current_url and _loaded(d), "the login form")
    browser.find_element(By.CSS_SELECTOR, "input[name=token]").send_keys(TOKEN)
    _navigate(browser, "form.login button[type=submit]", "the worklist after login")
    page = _wait_worklist(browser, lambda rows: len(rows) == 5, "the worklist's 5 rows")
    rows, now = page["rows"], float(page["now"])
    # Every thumbnail actually loaded (server-rendered PNG with the heatmap; lazy loading).
    loaded = _wait(browser, lambda d: _images_loaded(d, "img.thumb"), "the 5 thumbnails to load")
    assert len(loaded) == 5
    browser.save_screenshot(str(artefacts / "worklist.png"))

    # What the page shows is the reading order of the store's real results at the page's time.
    stored = node.queries.list_studies(limit=100)
    assert len(rows) == len(stored) == 5
    entries = node.queries.studies(limit=100)      # the same studies, as the worklist reads them
    expected = [(b, e.study_uid) for b, e in order_worklist(entries, now, MAX_WAIT_S)]
    assert [(r["band"], r["uid"]) for r in rows] == expected
    # The first likely-normal study waited past the maximum: it is on top, marked overdue.
    first = min(stored, key=lambda s: s["first_received_at"])
    assert first["decision"] == "likely_normal"
    assert rows[0] == {"uid": first["study_uid"], "band": "overdue", "decision": "likely_normal"}
    # The others were sent after the maximum wait: suspicious, then not assessable, then the
    # likely normal one. On a slow machine the not-assessable and likely-normal studies may
    # pass the maximum wait before the page is read too: then they are overdue (on top, oldest
    # first); a suspicious study never is.
    decisions = [r["decision"] for r in rows]
    assert sorted(decisions) == sorted(["likely_normal", "suspicious", "suspicious", "not_assessable",
                                        "likely_normal"])
    overdue = [r for r in rows if r["band"] == "overdue"]
    assert rows[:len(overdue)] == overdue and all(r["decision"] != "suspicious" for r in overdue)
    severity = {"suspicious": 0, "not_assessable": 1, "likely_normal": 2}
    rest = [severity[r["decision"]] for r in rows[len(overdue):]]
    assert rest == sorted(rest) and rest[:2] == [0, 0]
    # The JSON API agrees with the page, and both name the patient and the accession number
    # (read back from the spooled films' headers).
    api = httpx.get(web.url + "/api/studies", timeout=10,
                    headers={"Authorization": f"Bearer {TOKEN}"}).json()["studies"]
    assert {r["study_instance_uid"] for r in api} == {r["uid"] for r in rows}
    for r in api:
        hdr = __import__("pydicom").dcmread(node.queries.first_instance_path(r["study_instance_uid"]),
                                            stop_before_pixels=True)
        assert (r["accession_number"] or "", r["patient_id"], r["patient_name"]) == (
            hdr.get("AccessionNumber", ""), hdr.PatientID, str(hdr.PatientName))
    shown = browser.execute_script(
        "return Array.from(document.querySelectorAll('#worklist tr.row')).map("
        "r => [r.dataset.uid, r.querySelector('td.patient').innerText, r.querySelector('td.accession').innerText])")
    by_uid = {r["study_instance_uid"]: r for r in api}
    assert len(shown) == 5
    for uid, patient, accession in shown:
        assert accession == (by_uid[uid]["accession_number"] or "\u2013")
        assert by_uid[uid]["patient_id"] in patient
        if by_uid[uid]["patient_id"].startswith("BT-"):       # DICOM "Family^Given" shown as people write it
            assert patient.startswith("Browsertest, Patient")

    # Filter by decision with the form.
    browser.find_element(By.CSS_SELECTOR, "input[name=decision][value=suspicious]").click()
    _wait(browser, lambda d: d.find_element(
        By.CSS_SELECTOR, "input[name=decision][value=suspicious]").is_selected(), "the filter box ticked")
    _navigate(browser, "#apply-filters", "the filtered worklist page")
    filtered = _wait_worklist(browser, lambda rows: len(rows) == 2, "the 2 suspicious rows")["rows"]
    assert {r["decision"] for r in filtered} == {"suspicious"}

    # Study page of the top suspicious study: film, heatmap toggle, SR in words, deliveries.
    top_suspicious = next(r["uid"] for r in rows if r["band"] == "suspicious")
    assert filtered[0]["uid"] == top_suspicious
    _navigate(browser, "#worklist tr.row a.study-link", "the study page")
    _wait(browser, lambda d: _text(d, "study-uid") == top_suspicious, "the study page of the top suspicious study")
    assert _text(browser, "study-accession") == by_uid[top_suspicious]["accession_number"]
    assert _text(browser, "study-patient").startswith("Browsertest, Patient")
    widths = _wait(browser, lambda d: _images_loaded(d, "img.film-img, img.heatmap"), "the film and its heatmap")
    assert len(widths) >= 2
    assert _displayed(browser, "img.heatmap") and _displayed(browser, "img.film-img")
    browser.find_element(By.ID, "heatmap-toggle").click()
    _wait(browser, lambda d: not _displayed(d, "img.heatmap"), "the heatmap hidden by the toggle")
    assert _displayed(browser, "img.film-img")
    browser.find_element(By.ID, "heatmap-toggle").click()
    _wait(browser, lambda d: _displayed(d, "img.heatmap"), "the heatmap shown again")
    assert "calls this study suspicious" in _text(browser, "sr-content")
    deliveries = _text(browser, "deliveries")
    assert "outbox" in deliveries and "delivered" in deliveries
    browser.set_window_size(1400, 1900)
    browser.save_screenshot(str(artefacts / "study.png"))

    # The radiologist rejects the AI's "suspicious" call: no abnormality seen.
    assert _text(browser, "feedback-user") == RADIOLOGIST
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element(By.ID, "feedback-finding")).select_by_value("normal")
    _navigate(browser, "#feedback-reject", "the study page after the feedback")
    _wait(browser, lambda d: RADIOLOGIST in _text(d, "feedback-history") and "rejected" in _text(
        d, "feedback-history"), "the feedback in the study page's history")
    browser.save_screenshot(str(artefacts / "study_feedback.png"))
    (stored,) = node.queries.feedback(top_suspicious)
    assert (stored["user"], stored["verdict"], stored["finding"], stored["decision"]) == (
        RADIOLOGIST, "reject", "normal", "suspicious")
    result = node.queries.get_study(top_suspicious)["result"]["films"][0]
    assert (stored["model_version"], stored["threshold"]) == (result["model_version"], result["threshold"])
    audited = [e for e in read_audit(node.dirs.audit_log) if e["event_id"] == "110110"]
    assert [(e["user"], e["study_uid"]) for e in audited] == [(RADIOLOGIST, top_suspicious)]
    # ... shown on the worklist
    browser.get(web.url + "/")
    _wait(browser, lambda d: "rejected" in (d.execute_script(
        "const r = document.querySelector(`tr.row[data-uid='${arguments[0]}'] td.feedback`);"
        " return r ? r.innerText : ''", top_suspicious) or ""), "the rejection on the worklist row")
    browser.save_screenshot(str(artefacts / "worklist_feedback.png"))
    # ... and exported by `cxr-triage reconcile` as a discordant case for retraining
    out = artefacts / "feedback_discordant.csv"
    proc = subprocess.run([sys.executable, "-m", "cxr_triage.cli", "reconcile", "--feedback",
                           "--store", str(node.dirs.queue_db), "--discordant", str(out)],
                          capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if not k.startswith("CXR_TRIAGE_")})
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(out.open()))
    assert rows and {r["study_instance_uid"] for r in rows} == {top_suspicious}
    row = rows[0]
    assert (row["label"], row["discordance"], row["reviewer"], row["verdict"], row["finding_seen"]) == (
        "normal", "false_suspicious", RADIOLOGIST, "reject", "normal")
    assert row["model_version"] == result["model_version"] and float(row["threshold"]) == result["threshold"]
    assert row["file"] and Path(row["file"]).is_file()
