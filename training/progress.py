"""What the person running a training sees and what each epoch leaves behind.

Progress lines go to stderr (the command's JSON result is stdout): the split per source at
the start, a bar over the whole run with its ETA (epochs, or minutes when a time budget is
given: then its total follows whichever of the epochs and the budget ends the run first), one
line per epoch with the validation AUROC and the time left. JSON log lines and library warnings
(torch, MONAI) go to ``<out>/train_log.jsonl`` (:func:`log_to_file`), not between them. Each
epoch's row is appended to ``metrics.jsonl`` and ``metrics.csv`` in the run folder.

The rule that ends the epochs is the one the user gave: ``--epochs`` (a count), ``--max-minutes``
(a budget: the epochs are then unbounded, :data:`EPOCHS_UNDER_BUDGET`), or both (whichever
comes first); patience stops either early.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from cxr_triage.logs import JsonFormatter, RedactValues
from cxr_triage.training.manifest import Entry

log = logging.getLogger(__name__)

#: ``epochs`` of a run given only a time budget: the budget ends it (or patience), never the count.
EPOCHS_UNDER_BUDGET = 10_000


def say(line: str) -> None:
    """A progress line for the person running the command (stderr; the JSON result is stdout),
    printed above any progress bar (``tqdm.write``)."""
    from tqdm import tqdm

    tqdm.write(line, file=sys.stderr)
    sys.stderr.flush()


def epoch_of(epoch: int, epochs: int) -> str:
    """``epoch 3/12``, or ``epoch 3`` when the time budget rules (:data:`EPOCHS_UNDER_BUDGET`)."""
    return f"epoch {epoch}" if epochs >= EPOCHS_UNDER_BUDGET else f"epoch {epoch}/{epochs}"


def plan_line(first_epoch: int, epochs: int, max_minutes: float, patience: int) -> str:
    """What will end the run, in words: the epochs, the time budget or both, and patience."""
    if epochs >= EPOCHS_UNDER_BUDGET:
        until = f"until the {max_minutes:g} min budget is used (no epoch limit given)"
    elif max_minutes > 0:
        until = f"to epoch {epochs} or until the {max_minutes:g} min budget is used, whichever comes first"
    else:
        until = f"to epoch {epochs}"
    return f"training from epoch {first_epoch} {until}; early stop after {patience} epochs without a gain"


def run_bar(enabled: bool, first_epoch: int, epochs: int, max_minutes: float) -> Any:
    """A tqdm bar over the whole run with its ETA; None when progress bars are off. Advance it
    with :func:`advance`. Given a time budget (``max_minutes`` > 0) it counts minutes, its total
    the budget until the first epoch tells which limit ends the run first, then the minutes done
    plus the epoch line's ETA (the epochs left or the budget left, whichever is less); given
    only ``epochs``, it counts epochs."""
    if not enabled:
        return None
    from tqdm import tqdm

    if max_minutes > 0:
        bar = tqdm(total=max_minutes, desc="training", unit="min", file=sys.stderr, mininterval=5,
                   bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} min [{elapsed}<{remaining}]")
        bar.budget_min = max_minutes  # the total while the budget ends the run first (advance)
        return bar
    return tqdm(total=epochs - first_epoch + 1, desc="training", unit="epoch", file=sys.stderr, mininterval=5)


def advance(bar: Any, seconds: float, eta_min: float = float("nan"), left_s: float | None = None) -> None:
    """One epoch done that took ``seconds``: an epoch bar moves by one; a minute bar by its
    minutes, and its total becomes the minutes done plus ``eta_min`` (the epoch line's ETA,
    :func:`eta_minutes`), so its ETA follows whichever limit ends the run first. Given
    ``left_s`` (seconds of the time budget left), the minute bar counts the budget used (setup
    included) and its total stays the budget while the budget ends the run first."""
    if bar is None:
        return
    if bar.unit != "min":
        bar.update(1)
        return
    budget = float(getattr(bar, "budget_min", bar.total))
    done = budget - max(0.0, left_s) / 60 if left_s is not None else bar.n + seconds / 60
    bar.update(max(0.0, min(done, budget) - bar.n))
    if math.isnan(eta_min):
        return
    budget_first = left_s is not None and eta_min * 60 >= left_s - 1.0  # eta_min is rounded to 0.01 min
    bar.total = budget if budget_first else min(budget, bar.n + max(0.0, eta_min))
    bar.refresh()


def log_to_file(path: Path, level: str = "INFO") -> None:
    """Send the log's JSON lines and Python warnings (torch, MONAI) to ``path`` (appended) and
    only errors to stderr, so the progress stays readable (``--log-json`` keeps them on stderr)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    to_file = logging.FileHandler(path, encoding="utf-8")
    to_file.setFormatter(JsonFormatter())
    errors = logging.StreamHandler(sys.stderr)
    errors.setLevel(logging.ERROR)
    errors.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    for h in (to_file, errors):
        h.addFilter(RedactValues())
    root = logging.getLogger()
    root.handlers[:] = [to_file, errors]
    root.setLevel(level)
    logging.captureWarnings(True)


def split_table(entries: list[Entry]) -> str:
    """Patients, films, normal and abnormal films per source and split, as aligned text
    (printed at the start of a run; films outside train/val/test, e.g. excluded children, too)."""
    rows: dict[tuple[str, str], list[Any]] = {}
    for e in entries:
        r = rows.setdefault((e.source or "-", e.split or "-"), [set(), 0, 0, 0])
        r[0].add(e.patient_id)
        r[1] += 1
        r[2 if e.label == 0 else 3] += 1
    order = {"train": 0, "val": 1, "test": 2}
    head = ("source", "split", "patients", "films", "normal", "abnormal")
    body = [(src, sp, str(len(r[0])), str(r[1]), str(r[2]), str(r[3]))
            for (src, sp), r in sorted(rows.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 9), kv[0][1]))]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    fmt = "  ".join(f"{{:<{w}}}" if i < 2 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join(fmt.format(*r) for r in (head, *body))


def warn_small_test_split(entries: list[Entry]) -> None:
    """Say so when the test split is too small to compare the trained model with another one
    (:func:`cxr_triage.evaluation.sample_size.test_split_warning`)."""
    # start-up time: scipy loads only once a run starts, not for `train --help`
    from cxr_triage.evaluation.sample_size import test_split_warning

    test = [e for e in entries if e.split == "test"]
    line = test_split_warning(sum(e.label == 1 for e in test), sum(e.label == 0 for e in test))
    if line:
        say(f"WARNING: {line}")


def eta_minutes(history: list[dict[str, Any]], epochs_left: int, budget_left_s: float | None) -> float:
    """Minutes left: mean epoch time so far (last 3 epochs' ``seconds``) x epochs left, capped
    by the time budget left (seconds; None: no budget). NaN before the first epoch."""
    if not history:
        return float("nan")
    mean = float(np.mean([r["seconds"] for r in history[-3:]]))
    left = mean * max(0, epochs_left)
    if budget_left_s is not None:
        left = min(left, max(0.0, budget_left_s))
    return left / 60


def epoch_line(row: dict[str, Any], epochs: int, state: dict[str, Any], select: float, nod_auc: float,
               left_s: float | None) -> str:
    """The one line printed after an epoch: losses, validation AUROC (overall, per source, of
    the nodule/mass output ``nod_auc``), the selection metric ``select`` and the best so far,
    seconds and ETA (``left_s``: seconds of the time budget left, None without one; the ETA is
    never more than it)."""
    eta = row["eta_min"] if left_s is None else min(row["eta_min"], max(0.0, left_s) / 60)
    return (f"{epoch_of(row['epoch'], epochs)}: train loss {row['train_loss']:.4f}, validation AUROC "
            f"{row['val_auroc']:.4f} (by source: "
            + ", ".join(f"{k} {v:.3f}" for k, v in row["val_auroc_by_source"].items() if not math.isnan(v))
            + (f"; nodule/mass {nod_auc:.3f}" if not math.isnan(nod_auc) else "")
            + f"; selection {select:.4f}, best {state['best_auroc']:.4f} at epoch {state['best_epoch']}), "
            f"{row['seconds']:.0f} s; ETA {eta:.1f} min"
            + (f", {max(0.0, left_s) / 60:.1f} min of the budget left" if left_s is not None else ""))


def _null_nan(value: Any) -> Any:
    """``value`` with NaN as None (a flat mapping without its NaN entries), so a log line stays
    strict JSON."""
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if not (isinstance(v, float) and math.isnan(v))}
    return None if isinstance(value, float) and math.isnan(value) else value


def log_epoch(out: Path, row: dict[str, Any]) -> None:
    """Append the epoch's row to ``<out>/metrics.jsonl`` and ``<out>/metrics.csv`` (per-source
    AUROCs flattened into ``val_auroc_<source>`` columns), and log it (one JSON log line:
    ``<out>/train_log.jsonl``, or stderr with ``--log-json``; NaN as null or left out)."""
    log.info("epoch done", extra={k: _null_nan(v) for k, v in row.items()})
    with (out / "metrics.jsonl").open("a") as fh:
        fh.write(json.dumps(row) + "\n")
    flat = {k: v for k, v in row.items() if not isinstance(v, dict)}
    flat.update({f"val_auroc_{k}": v for k, v in row["val_auroc_by_source"].items()})
    path = out / "metrics.csv"
    new = not path.exists()
    with path.open("a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(flat))
        if new:
            w.writeheader()
        w.writerow(flat)
