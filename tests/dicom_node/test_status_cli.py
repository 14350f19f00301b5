"""`cxr-triage status` prints a report for a person: no INFO log line among it or beside it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from cxr_triage.cli import main
from cxr_triage.dicom_node.service import cli as service_cli


def test_status_output_has_no_info_log_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'[node]\nstate_dir = "{tmp_path / "state"}"\n\n[logging]\nformat = "text"\n')
    report = service_cli.status_report

    def chatty_report(*args: Any, **kwargs: Any) -> dict[str, Any]:
        # what opening a PostgreSQL job store logs (dicom_node/store/db.py)
        logging.getLogger("cxr_triage.dicom_node.store.db").info("job store on postgresql")
        logging.getLogger("cxr_triage.dicom_node.store.db").warning("a real warning")
        return report(*args, **kwargs)

    monkeypatch.setattr(service_cli, "status_report", chatty_report)
    root = logging.getLogger()
    level, handlers = root.level, root.handlers[:]
    try:
        assert main(["--config", str(cfg), "status"]) == 1        # no job store yet
    finally:
        root.setLevel(level)
        root.handlers[:] = handlers
    got = capsys.readouterr()
    assert got.out.startswith("state dir: ") and "no job store yet" in got.out
    assert "job store on postgresql" not in got.out + got.err
    assert "a real warning" in got.err and "a real warning" not in got.out
