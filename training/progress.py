"""What the person running a training sees and what each epoch leaves behind.

Progress lines go to stderr (the command's JSON result is stdout): the split per source at
the start, one line per epoch with the validation AUROC and the time left. Each epoch's row
is appended to ``metrics.jsonl`` and ``metrics.csv`` in the run folder.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from cxr_triage.training.manifest import Entry


def say(line: str) -> None:
    """A progress line for the person running the command (stderr; the JSON result is stdout)."""
    print(line, file=sys.stderr, flush=True)


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
    seconds and ETA (``left_s``: seconds of the time budget left, None without one)."""
    return (f"epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.4f}, validation AUROC "
            f"{row['val_auroc']:.4f} (by source: "
            + ", ".join(f"{k} {v:.3f}" for k, v in row["val_auroc_by_source"].items() if not math.isnan(v))
            + (f"; nodule/mass {nod_auc:.3f}" if not math.isnan(nod_auc) else "")
            + f"; selection {select:.4f}, best {state['best_auroc']:.4f} at epoch {state['best_epoch']}), "
            f"{row['seconds']:.0f} s; ETA {row['eta_min']:.1f} min"
            + (f", {max(0.0, left_s) / 60:.1f} min of the budget left" if left_s is not None else ""))


def log_epoch(out: Path, row: dict[str, Any]) -> None:
    """Append the epoch's row to ``<out>/metrics.jsonl`` and ``<out>/metrics.csv`` (per-source
    AUROCs flattened into ``val_auroc_<source>`` columns)."""
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
