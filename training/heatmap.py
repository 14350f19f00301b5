"""The heatmap's lung-field prior and its pointing-game check, fitted when a run ends.

A heatmap is shown by the worker only when it means something: on the validation films with
radiologists' boxes, its maximum must land inside a box significantly more often than a fixed
guess (:func:`cxr_triage.evaluation.model_checks.pointing_game`). The training films' boxes give
the lung-field prior the heatmap is masked to and the guess itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cxr_triage.evaluation import model_checks as mc
from cxr_triage.training import calibrate
from cxr_triage.training.dataset import load_inputs, read_pixels
from cxr_triage.training.manifest import Entry, resolve
from cxr_triage.training.progress import say
from cxr_triage.training.train_config import TrainConfig


def film_side(path: Path) -> float:
    """A square film's side in pixels (the boxes' coordinate frame)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return float(max(im.size))
    except OSError:
        return float(max(read_pixels(path).shape))


def heatmap_validation(cfg: TrainConfig, entries: list[Entry], root: Path, net: Any, cal: dict[str, Any],
                       device: Any) -> dict[str, Any]:
    """The heatmap's lung-field prior and its test: the box prior of the training films with
    boxes gives the mask and the fixed guess; on the validation films with boxes, the masked
    calibrated CAM's maximum must land in a box more often than the guess
    (:func:`cxr_triage.evaluation.model_checks.pointing_game`) for ``validated``."""
    import torch  # torch only once training runs

    boxes = mc.read_boxes(cfg.boxes_csv)

    def key(e: Entry) -> str:
        return str(resolve(e, root).resolve())

    out: dict[str, Any] = {"validated": False, "boxes_csv": cfg.boxes_csv}
    tr = [e for e in entries if e.split == "train" and key(e) in boxes]
    va = [e for e in entries if e.split == "val" and key(e) in boxes]
    if not tr or not va:
        out["note"] = f"boxes for {len(tr)} training and {len(va)} validation films: not enough to validate"
        return out
    cache = Path(cfg.cache_dir) if cfg.cache_dir else Path(cfg.out) / "cache"
    x = load_inputs(va, root, cfg.spec(), cache, progress=False)
    net.eval()
    with torch.no_grad():
        cams = np.concatenate([net.logit_and_cam(torch.from_numpy(np.asarray(x[i:i + 32], dtype=np.float32))
                                                 .to(device))[1].float().cpu().numpy() for i in range(0, len(x), 32)])
    grid = cams.shape[1]
    prior = mc.box_prior([boxes[key(e)] for e in tr], [film_side(resolve(e, root)) for e in tr], grid)
    mask = mc.lung_field_mask(prior)
    guess = mc.best_fixed_point(prior)
    heat = calibrate.expit((cams + cal["logit_shift"]) / cal["temperature"])
    sides = [film_side(resolve(e, root)) for e in va]
    vboxes = [boxes[key(e)] for e in va]
    masked = mc.pointing_game(heat * mask, vboxes, sides, guess)
    out.update({"mask": mask.tolist(), "guess_point": list(guess), "training_films_with_boxes": len(tr),
                "validation": masked, "validation_unmasked": mc.pointing_game(heat, vboxes, sides, guess),
                "validated": bool(masked["beats_guess"]),
                "scale": "sigmoid((cam + logit_shift) / temperature): calibrated local P(abnormal), fixed scale"})
    say(f"heatmap pointing game (validation, {masked['films']} films with boxes): heatmap "
         f"{mc.wilson_text(masked['heatmap_hit_rate'])} vs fixed guess {mc.wilson_text(masked['fixed_guess_hit_rate'])}"
         f", McNemar p {masked['mcnemar_exact_p']}: {'validated' if out['validated'] else 'NOT validated (not shown)'}")
    return out
