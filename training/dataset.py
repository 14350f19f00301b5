"""Films -> cached model inputs -> MONAI datasets with augmentation.

Every film goes through the worker's reader and THE shared ``preprocess()`` once; the result
is cached as a float16 array keyed by the file list and the PreprocessSpec, so epochs cost
only augmentation and the network (2 CPU cores). Augmentation (MONAI dictionary transforms)
works on the preprocessed tensor, so train, export check and worker share one preprocessing.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cxr_triage.contract.preprocessing import PreprocessSpec, preprocess
from cxr_triage.contract.result import NotAssessable
from cxr_triage.inference.reader import read_film
from cxr_triage.training.manifest import Entry, resolve

log = logging.getLogger(__name__)


#: how many undecodable films a FilmReadError names before "and N more"
SHOWN_BAD_FILMS = 5


class FilmReadError(ValueError):
    """Manifest films that cannot be decoded: one message naming them (the first
    :data:`SHOWN_BAD_FILMS`, then a count; ``train`` prints it, exit 2, no traceback).
    ``bad``: (resolved path, the reader's reason) of every one."""

    def __init__(self, bad: Sequence[tuple[str, str]]):
        self.bad = list(bad)
        shown = "; ".join(f"{path}: {why}" for path, why in self.bad[:SHOWN_BAD_FILMS])
        more = f"; and {len(self.bad) - SHOWN_BAD_FILMS} more" if len(self.bad) > SHOWN_BAD_FILMS else ""
        many = len(self.bad) > 1
        super().__init__(f"{f'{len(self.bad)} films cannot be decoded: ' if many else ''}{shown}{more}; leave "
                         f"{'them' if many else 'it'} out of the manifest (`cxr-triage manifest` decodes every "
                         "film and leaves broken ones out)")


def read_pixels(path: Path) -> np.ndarray:
    """Decode a film to float32 (H, W) in [0, 1], MONOCHROME2, with the worker's reader.

    Raises :class:`FilmReadError` naming ``path`` (resolved) when it cannot be decoded
    (truncated, not a film, missing)."""
    try:
        return np.asarray(read_film(path).pixels, dtype=np.float32)
    except NotAssessable as exc:
        raise FilmReadError([(str(Path(path).resolve()), str(exc))]) from None


def cache_key(entries: Sequence[Entry], root: Path, spec: PreprocessSpec) -> str:
    h = hashlib.sha256(json.dumps(spec.to_dict(), sort_keys=True).encode())
    for e in entries:
        p = resolve(e, root)
        h.update(str(p).encode())
        try:
            h.update(str(p.stat().st_size).encode())
        except OSError:
            pass
    return h.hexdigest()[:16]


def load_inputs(entries: Sequence[Entry], root: Path, spec: PreprocessSpec,
                cache_dir: Path | None = None, progress: bool = True) -> np.ndarray:
    """(N, 1, S, S) float16 preprocessed films, from the cache when it matches. FilmReadError
    naming every film that does not decode (after reading them all)."""
    cache = None
    if cache_dir is not None:
        cache = Path(cache_dir) / f"inputs_{cache_key(entries, root, spec)}.npy"
        if cache.exists():
            arr = np.load(cache, mmap_mode="r")
            if arr.shape[0] == len(entries):
                log.info("loaded cached inputs", extra={"path": str(cache)})
                return np.asarray(arr)
    out = np.empty((len(entries), 1, spec.size, spec.size), dtype=np.float16)
    it: Any = enumerate(entries)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, total=len(entries), desc="preprocess", unit="film", mininterval=5)
    bad: list[tuple[str, str]] = []
    for i, e in it:
        try:
            out[i] = preprocess(read_pixels(resolve(e, root)), spec)
        except FilmReadError as exc:  # every broken film is named, not just the first
            bad += exc.bad
    if bad:
        raise FilmReadError(bad)
    if cache is not None:
        save_npy_atomic(cache, out)
    return out


def save_npy_atomic(path: Path, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` (.npy) through a temporary file and a rename: a cache is
    either whole or absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, array)
    tmp.replace(path)


def train_transforms(strength: float = 1.0, spatial_only: bool = False):
    """MONAI augmentation on a preprocessed (1, S, S) film: small pose/scale changes, and
    blur/noise/contrast jitter that make resolution and pipeline differences less useful
    (``spatial_only``: pose/scale alone, when :class:`~cxr_triage.training.augment.PipelineAugment`
    already varies the pixels before preprocessing)."""
    from monai.transforms import (  # MONAI only once training runs
        Compose,
        EnsureTyped,
        RandAdjustContrastd,
        RandAffined,
        RandGaussianNoised,
        RandGaussianSmoothd,
        RandScaleIntensityd,
        RandShiftIntensityd,
    )

    s = strength
    spatial = [
        EnsureTyped(keys="image", dtype=np.float32, track_meta=False),
        RandAffined(keys="image", prob=0.8, rotate_range=0.17 * s, scale_range=0.12 * s,
                    translate_range=(12 * s, 12 * s), padding_mode="border", mode="bilinear"),
    ]
    if spatial_only:
        return Compose(spatial)
    return Compose([
        *spatial,
        RandGaussianSmoothd(keys="image", prob=0.3 * s, sigma_x=(0.3, 1.2), sigma_y=(0.3, 1.2)),
        RandGaussianNoised(keys="image", prob=0.3 * s, std=0.05),
        RandScaleIntensityd(keys="image", prob=0.3 * s, factors=0.1),
        RandShiftIntensityd(keys="image", prob=0.3 * s, offsets=0.1),
        RandAdjustContrastd(keys="image", prob=0.0 if s == 0 else 0.2, gamma=(0.8, 1.25)),
    ])


def eval_transforms():
    from monai.transforms import Compose, EnsureTyped  # MONAI only once training runs

    return Compose([EnsureTyped(keys="image", dtype=np.float32, track_meta=False)])


def make_dataset(inputs: np.ndarray, labels: Sequence[float] | np.ndarray, transform,
                 known: np.ndarray | None = None):
    """A MONAI Dataset of {"image": (1, S, S), "label": (K,) targets, "known": (K,) mask,
    "index": int} items (``labels`` (N,) or (N, K); ``known`` defaults to all ones)."""
    from monai.data import Dataset  # MONAI only once training runs

    y = np.asarray(labels, dtype=np.float32).reshape(len(labels), -1)
    k = np.ones_like(y) if known is None else np.asarray(known, dtype=np.float32).reshape(y.shape)
    data = [{"image": inputs[i], "label": y[i], "known": k[i], "index": i} for i in range(len(y))]
    return Dataset(data=data, transform=transform)


def load_films(entries: Sequence[Entry], root: Path, max_side: int = 512, cache_dir: Path | None = None,
               progress: bool = True) -> list[np.ndarray]:
    """Decoded films as uint8 (H, W) arrays (MONOCHROME2), larger ones area-reduced so the
    short side is ``max_side``: the input of train-time pipeline augmentation. Cached like
    :func:`load_inputs` (one ``.npz`` keyed by the file list)."""
    from PIL import Image

    key = cache_key(entries, root, PreprocessSpec(size=max_side, harmonise_size=max_side))
    cache = Path(cache_dir) / f"films_{key}_{hashlib.sha256(b'uint8').hexdigest()[:4]}.npz" if cache_dir else None
    if cache is not None and cache.exists():
        with np.load(cache) as z:
            films = [z[f"f{i}"] for i in range(len(entries))] if len(z.files) == len(entries) else None
        if films is not None:
            return films
    films = []
    it: Any = entries
    if progress:
        from tqdm import tqdm

        it = tqdm(entries, desc="decode", unit="film", mininterval=5)
    for e in it:
        px = read_pixels(resolve(e, root))
        side = min(px.shape)
        if side > max_side:
            scale = max_side / side
            size = (max(1, round(px.shape[1] * scale)), max(1, round(px.shape[0] * scale)))
            pil = Image.fromarray(np.ascontiguousarray(px, dtype=np.float32), mode="F")
            px = np.asarray(pil.resize(size, resample=Image.Resampling.BOX), dtype=np.float32)
        films.append(np.clip(np.rint(px * 255.0), 0, 255).astype(np.uint8))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, **{f"f{i}": f for i, f in enumerate(films)})
        tmp.replace(cache)
    return films


class FilmDataset:
    """Training items from decoded films: pipeline augmentation -> THE ``preprocess()`` ->
    MONAI pose/scale jitter. Item: {"image": (1, S, S) float32, "label": (K,) targets,
    "known": (K,) target mask, "index": i}. Deterministic for a given ``set_epoch`` seed."""

    def __init__(self, films: Sequence[np.ndarray], targets: np.ndarray, known: np.ndarray, spec: PreprocessSpec,
                 pipeline: Any, transform: Any, seed: int = 0, lesions: Any = None):
        self.films, self.targets, self.known = films, targets, known
        self.spec, self.pipeline, self.transform = spec, pipeline, transform
        self.seed, self.epoch = seed, 0
        #: a :class:`~cxr_triage.training.synthetic.LesionDraws` (synthetic nodules/masses in
        #: normal films, before the pipeline chain) or None
        self.lesions = lesions

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.transform.set_random_state(seed=(self.seed * 1000 + epoch) % (2**31))

    def __len__(self) -> int:
        return len(self.films)

    def __getitem__(self, i: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, self.epoch, int(i)])
        film, label, known = self.films[i], self.targets[i], self.known[i]
        if self.lesions is not None:  # its own random stream: the chain draws stay the same
            film, label, known = self.lesions(i, film, label, known, (self.seed, self.epoch))
        film = self.pipeline(film, rng)
        x = preprocess(film, self.spec)
        x = np.asarray(self.transform({"image": x})["image"], dtype=np.float32)
        return {"image": x, "label": label, "known": known, "index": i}
