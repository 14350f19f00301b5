"""The worklist while the job store's PostgreSQL server is down, and after it is back.

A real server (tests/support/postgres_server.py, skipped without the binaries) holds one
received study. Stopped: the worklist page answers 503 with a banner saying the store is
unavailable (and refreshes itself), ``/api/studies`` 503 with a one-line reason, the metrics
``cxr_triage_store_up 0``. Started again: the same app, without a restart, lists the study.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from support.node_peers import wait_for
from support.postgres_server import skip_reason, started_server

from cxr_triage.dicom_node.store.db import StoreOptions
from cxr_triage.dicom_node.store.jobs import InstanceRecord, JobStore
from cxr_triage.dicom_node.store.queries import StudyQueries
from cxr_triage.dicom_node.web.app import WebSettings, create_app

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")
STUDY = "2.25.4242"


def _answers(client: TestClient) -> bool:
    return client.get("/api/studies").status_code == 200


def test_worklist_says_the_store_is_unavailable_and_recovers(tmp_path: Path) -> None:
    server = started_server()
    store = JobStore(tmp_path / "unused.sqlite3",
                     options=StoreOptions("postgresql", server.dsn, "web-node", connect_timeout_s=1.0))
    try:
        store.add_instance(InstanceRecord(STUDY + ".1.1", STUDY, STUDY + ".1", "1.2.840.10008.5.1.4.1.1.1.1",
                                          "1.2.840.10008.1.2.1", "/spool/x.dcm", 10, "SCU", time.time()))
        client = TestClient(create_app(StudyQueries(store), None, settings=WebSettings(state_dir=tmp_path)))
        assert [s["study_instance_uid"] for s in client.get("/api/studies").json()["studies"]] == [STUDY]

        server.stop()
        api = client.get("/api/studies")
        assert api.status_code == 503 and api.headers["retry-after"]
        detail = api.json()["detail"]
        assert detail.startswith("job store unavailable: ") and "\n" not in detail and len(detail) <= 300
        page = client.get("/", headers={"accept": "text/html"})
        assert page.status_code == 503 and 'id="store-unavailable"' in page.text
        assert "The job store is unavailable" in page.text and 'http-equiv="refresh"' in page.text
        assert client.get(f"/studies/{STUDY}").status_code == 503
        assert "cxr_triage_store_up 0.0" in client.get("/metrics").text

        server.start()
        assert wait_for(lambda: _answers(client), 30, 0.5)
        assert [s["study_instance_uid"] for s in client.get("/api/studies").json()["studies"]] == [STUDY]
        page = client.get("/")
        assert page.status_code == 200 and "store-unavailable" not in page.text and STUDY in page.text
    finally:
        store.dispose()
        server.destroy()
