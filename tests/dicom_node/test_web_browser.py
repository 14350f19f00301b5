"""The worklist in a real headless browser (Debian chromium + chromedriver via Selenium),
against a running node that received real sample films from dcmtk storescu and triaged them.

Saves test-artifacts/worklist.png and test-artifacts/study.png.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from conftest import DCMTK_BIN, free_port
from pydicom.uid import generate_uid
from support.web_node import CANINE, screen_films

from cxr_triage.config import load_config
from cxr_triage.dicom_node.web.worklist import StudyEntry, order_worklist
from cxr_triage.paths import repo_root

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = repo_root() / "test-artifacts"
MAX_WAIT_S = 8.0


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
        web={"port": 0, "max_wait_likely_normal_min": MAX_WAIT_S / 60.0, "refresh_s": 600},
    )
    films = screen_films(Triager(cfg), shared_data, 2, 2)

    def wrap(png: Path) -> Path:
        return write_dicom(png_to_dicom(png, study_uid=generate_uid()), root / f"{generate_uid()}.dcm")

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


def _navigate(driver, element) -> None:
    """Click something that loads a new page and wait until the new page is there."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    old = driver.find_element(By.TAG_NAME, "main")
    element.click()
    WebDriverWait(driver, 15).until(EC.staleness_of(old))
    WebDriverWait(driver, 15).until(lambda d: d.execute_script("return document.readyState") == "complete")


def _rows(driver) -> list[dict[str, str]]:
    from selenium.webdriver.common.by import By

    return [{"uid": r.get_attribute("data-uid"), "band": r.get_attribute("data-band"),
             "decision": r.get_attribute("data-decision")}
            for r in driver.find_elements(By.CSS_SELECTOR, "#worklist tr.row")]


def test_worklist_order_heatmap_toggle_and_study_page(browser, running_node):  # browser starts first
    from selenium.webdriver.common.by import By

    node, web = running_node
    browser.get(web.url + "/")
    rows = _rows(browser)
    now = float(browser.find_element(By.ID, "worklist").get_attribute("data-now"))
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "worklist.png"))

    # What the page shows is the reading order of the store's real results at the page's time.
    stored = node.queries.list_studies(limit=100)
    assert len(rows) == len(stored) == 5
    entries = [StudyEntry(s["study_uid"], s["first_received_at"], s["decision"]) for s in stored]
    expected = [(b, e.study_instance_uid) for b, e in order_worklist(entries, now, MAX_WAIT_S)]
    assert [(r["band"], r["uid"]) for r in rows] == expected
    # The first likely-normal study waited past the maximum: it is on top, marked overdue.
    first = min(stored, key=lambda s: s["first_received_at"])
    assert first["decision"] == "likely_normal"
    assert rows[0] == {"uid": first["study_uid"], "band": "overdue", "decision": "likely_normal"}
    # The others were sent after the maximum wait: suspicious, then not assessable, then the
    # likely normal one (unless a slow machine let it pass the maximum wait too).
    rest = [r["decision"] for r in rows[1:] if r["band"] != "overdue"]
    assert rest[:3] == ["suspicious", "suspicious", "not_assessable"]
    # Every thumbnail actually loaded (server-rendered PNG with the heatmap).
    loaded = browser.execute_script(
        "return Array.from(document.querySelectorAll('img.thumb')).map(i => i.complete && i.naturalWidth)")
    assert len(loaded) == 5 and all(w and w > 0 for w in loaded)
    # The JSON API agrees with the page.
    api = httpx.get(web.url + "/api/studies", timeout=10).json()["studies"]
    assert {r["study_instance_uid"] for r in api} == {r["uid"] for r in rows}

    # Filter by decision with the form.
    browser.find_element(By.CSS_SELECTOR, "input[name=decision][value=suspicious]").click()
    _navigate(browser, browser.find_element(By.ID, "apply-filters"))
    filtered = _rows(browser)
    assert {r["decision"] for r in filtered} == {"suspicious"} and len(filtered) == 2

    # Study page of the top suspicious study: film, heatmap toggle, SR in words, deliveries.
    _navigate(browser, browser.find_element(By.CSS_SELECTOR, "#worklist tr.row a.study-link"))
    top_suspicious = next(r["uid"] for r in rows if r["band"] == "suspicious")
    assert browser.find_element(By.ID, "study-uid").text == top_suspicious
    heat = browser.find_element(By.CSS_SELECTOR, "img.heatmap")
    film = browser.find_element(By.CSS_SELECTOR, "img.film-img")
    assert browser.execute_script("return arguments[0].naturalWidth", film) > 0
    assert browser.execute_script("return arguments[0].naturalWidth", heat) > 0
    assert heat.is_displayed()
    toggle = browser.find_element(By.ID, "heatmap-toggle")
    toggle.click()
    assert not heat.is_displayed() and film.is_displayed()
    toggle.click()
    assert heat.is_displayed()
    sr = browser.find_element(By.ID, "sr-content").text
    assert "calls this study suspicious" in sr
    deliveries = browser.find_element(By.ID, "deliveries").text
    assert "outbox" in deliveries and "delivered" in deliveries
    browser.set_window_size(1400, 1900)
    browser.save_screenshot(str(ARTIFACTS / "study.png"))
