"""The time budget as documented (issue 24): the rule the user gave ends the run (the budget
alone: no epoch count; both: whichever first), a resumed run gets a fresh patience however the
last one stopped, and the progress a person reads (plan in words, a run bar with ETA) with the
JSON log lines in a file."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from cxr_triage.config import load_config
from cxr_triage.training.cli import config_from_args, register
from cxr_triage.training.progress import (
    EPOCHS_UNDER_BUDGET,
    advance,
    epoch_line,
    epoch_of,
    eta_minutes,
    log_to_file,
    plan_line,
    run_bar,
)


def _config(*argv: str):
    sub = argparse.ArgumentParser().add_subparsers()
    register(sub, "train", "train")
    return config_from_args(sub.choices["train"].parse_args(["--manifest", "m.csv", "--out", "o", *argv]),
                            load_config(None, environ={}))


def test_the_rule_the_user_gave_ends_the_run() -> None:
    only_budget = _config("--max-minutes", "4")
    assert (only_budget.epochs, only_budget.max_minutes) == (EPOCHS_UNDER_BUDGET, 4.0)
    both = _config("--max-minutes", "4", "--epochs", "30")
    assert (both.epochs, both.max_minutes) == (30, 4.0)
    assert _config("--epochs", "5").epochs == 5 and _config().epochs == 12   # the default count
    assert "until the 4 min budget is used (no epoch limit given)" in plan_line(1, only_budget.epochs, 4, 4)
    assert "to epoch 30 or until the 4 min budget is used, whichever comes first" in plan_line(1, 30, 4, 4)
    assert epoch_of(3, EPOCHS_UNDER_BUDGET) == "epoch 3" and epoch_of(3, 12) == "epoch 3/12"


def test_init_from_help_states_the_epoch_rule_it_follows() -> None:
    """Issue 24 re-run: --init-from's help said --epochs 8 while --max-minutes alone ran 9 epochs
    ("no epoch limit given"); the help states the rule the code follows."""
    assert _config("--init-from", "bundled").epochs == 8
    assert _config("--init-from", "bundled", "--max-minutes", "4").epochs == EPOCHS_UNDER_BUDGET
    sub = argparse.ArgumentParser().add_subparsers()
    register(sub, "train", "train")
    text = " ".join(sub.choices["train"].format_help().split())
    assert "--epochs 8 (none when only --max-minutes is given: the budget ends the run)" in text


def test_resume_gets_a_fresh_patience_however_the_last_run_stopped() -> None:
    from cxr_triage.training.train_model import restore

    loads = SimpleNamespace(load_state_dict=lambda _: None)
    model = SimpleNamespace(net=loads, ema=None, opt=loads, sched=loads)
    for bad in (1, 2, 4):   # stopped by the budget with 1 or 2 epochs without a gain, or by patience
        ck = {"model": {}, "optimizer": {}, "scheduler": {},
              "state": {"epoch": 5, "best_auroc": 0.8, "best_epoch": 3, "bad_epochs": bad, "history": []}}
        assert restore(model, ck, SimpleNamespace(patience=4, epochs=12), SimpleNamespace(main=False))["bad_epochs"] == 0


def test_run_bar_counts_minutes_under_a_budget_and_epochs_otherwise() -> None:
    minutes = run_bar(True, 1, EPOCHS_UNDER_BUDGET, 4.0)
    advance(minutes, 90.0)
    assert (minutes.unit, minutes.total, minutes.n) == ("min", 4.0, 1.5)
    minutes.close()
    epochs = run_bar(True, 3, 12, 0.0)
    advance(epochs, 90.0)
    assert (epochs.total, epochs.n) == (10, 1)
    epochs.close()
    assert run_bar(False, 1, 12, 0.0) is None


def test_run_bar_follows_whichever_limit_ends_first() -> None:
    """Issue 24 re-run: --epochs 50 --max-minutes 4 counted epochs (ETA 28:39) while the epoch
    line said 0.8 min of the budget left; the bar now follows the epoch line's ETA."""
    both = run_bar(True, 1, 50, 4.0)
    advance(both, 48.0, eta_minutes([{"seconds": 48.0}], 49, 4 * 60 - 48.0))   # the budget ends first
    assert (both.unit, both.n, both.total) == ("min", 0.8, 4.0)
    both.close()
    few = run_bar(True, 1, 3, 4.0)
    advance(few, 30.0, eta_minutes([{"seconds": 30.0}], 2, 4 * 60 - 30.0))       # the epochs end first
    assert (few.n, few.total) == (0.5, 1.5)
    few.close()


def test_the_bar_keeps_the_budget_and_the_eta_never_passes_it() -> None:
    """Issue 24 site re-run 2: with setup time before the first epoch the bar's total went
    0.0/2.0 -> 0.1/0.9 -> 0.2/1.8 min, and epoch 2 said "ETA 1.4 min, 1.3 min of the budget left"."""
    bar = run_bar(True, 1, 50, 2.0)
    for seconds, left_s in ((19.0, 90.0), (8.0, 80.9), (11.0, 69.0)):   # the budget ends first
        advance(bar, seconds, round(eta_minutes([{"seconds": seconds}], 48, left_s) , 2), left_s - 0.5)
        assert bar.total == 2.0 and bar.n == pytest.approx(2.0 - (left_s - 0.5) / 60)
    bar.close()
    few = run_bar(True, 1, 3, 4.0)   # the epochs end first: minutes used plus their ETA
    advance(few, 30.0, eta_minutes([{"seconds": 30.0}], 2, 200.0), 200.0)
    assert few.total == pytest.approx(4.0 - 200 / 60 + 1.0)
    few.close()
    row = {"epoch": 2, "train_loss": 0.93, "val_auroc": 0.4, "val_auroc_by_source": {"site": 0.4},
           "seconds": 8.0, "eta_min": round(80.9 / 60, 2)}           # 1.35 rounded; 1.348 min left
    state = {"best_auroc": 0.75, "best_epoch": 1}
    line = epoch_line(row, 50, state, 0.4, float("nan"), 80.9)
    assert line.endswith("ETA 1.3 min, 1.3 min of the budget left")


def test_a_resumed_copy_continues_in_the_folder_given() -> None:
    """Issue 24 site re-run 2: --resume --out runs/budget_resume (a copied run folder) said
    "ignored out=..." yet wrote there; the run continues in the folder given (docs/training.md)."""
    from dataclasses import asdict

    from cxr_triage.training.train_config import resumed_config

    saved = asdict(_config("--max-minutes", "2"))
    saved["out"] = "runs/budget"
    cfg, ignored = resumed_config(saved, _config("--max-minutes", "2"))
    assert cfg.out == "o" and not any(line.startswith("out=") for line in ignored)


def test_pretrained_trunk_prints_nothing_on_stdout(capsys: pytest.CaptureFixture,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """Issue 24 re-run: efficientnet's "Loaded pretrained weights for efficientnet-lite0" went to
    stdout (the command's JSON) in every ImageNet run: it goes to the log now."""
    from cxr_triage.training.network import _EffNetLiteFeatures

    with caplog.at_level(logging.INFO, logger="cxr_triage.training.network"):
        _EffNetLiteFeatures(pretrained=True, image_size=64)
    assert capsys.readouterr().out == ""
    assert any("Loaded pretrained weights" in r.getMessage() for r in caplog.records)


def test_json_log_lines_go_to_the_file_not_between_the_progress(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    root = logging.getLogger()
    before = root.handlers[:], root.level
    try:
        log_to_file(tmp_path / "train_log.jsonl")
        logging.getLogger("cxr_triage.training").info("epoch saved", extra={"epoch": 1})
        logging.getLogger("py.warnings").warning("a MONAI deprecation")
        for h in root.handlers:
            h.flush()
        lines = [json.loads(x) for x in (tmp_path / "train_log.jsonl").read_text().splitlines()]
        assert [x["msg"] for x in lines] == ["epoch saved", "a MONAI deprecation"]
        assert capsys.readouterr().err == ""
    finally:
        root.handlers[:], _ = before
        root.setLevel(before[1])



def test_each_epoch_is_a_json_log_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Issue 24 site re-run 2: `train --log-json` on a tiny run printed no JSON line (nothing
    was logged but a cache hit); each epoch's row is one now (NaN as null), on stderr with
    --log-json (the root handler setup_logging installs), else in train_log.jsonl."""
    from cxr_triage.logs import setup_logging
    from cxr_triage.training.progress import log_epoch

    root = logging.getLogger()
    before = root.handlers[:], root.level
    try:
        setup_logging("INFO", "json")
        log_epoch(tmp_path, {"epoch": 1, "train_loss": 1.27, "val_auroc": float("nan"),
                             "val_auroc_by_source": {"a": 0.5, "b": float("nan")}, "seconds": 2.0})
        line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
        assert line["msg"] == "epoch done" and line["epoch"] == 1 and line["val_auroc"] is None
        assert line["val_auroc_by_source"] == {"a": 0.5}
    finally:
        root.handlers[:], _ = before
        root.setLevel(before[1])


def test_the_learning_rate_schedule_ends_with_the_rule_that_ends_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from cxr_triage.training import train_model

    now = [1000.0]
    monkeypatch.setattr(train_model.time, "time", lambda: now[0])
    by_steps = train_model.schedule_fraction(100, 1000.0, None)
    assert (by_steps(0), by_steps(50), by_steps(500)) == (0.0, 0.5, 1.0)
    budget = train_model.schedule_fraction(100 * EPOCHS_UNDER_BUDGET, 1000.0, 1240.0)  # 4 minutes, no count
    now[0] = 1120.0
    assert budget(3) == pytest.approx(0.5)
    now[0] = 2000.0
    assert budget(4) == 1.0
