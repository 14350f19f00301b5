"""Bring a film upright: from Patient Orientation when the header gives it, else check the pixels.

**Header.** Patient Orientation (0020,0020; PS3.3 C.7.6.1.1.1) gives the patient direction of
the row (left to right) and of the column (top to bottom) of the stored image, as letters L, R,
A, P, H, F. A frontal chest film is upright when its column runs toward the feet (F) and its row
toward the patient's left or right (L: displayed facing the patient, R: as seen from the tube;
both are in use, so a left-right mirror is not decided from the header). :func:`header_turn`
gives the quarter turns (``np.rot90``) that make a film so: ``H\\L`` (an upright ``L\\F`` film
turned 90 degrees clockwise) needs one counter-clockwise turn, ``R\\H`` two. A turn of the
pixels changes the directions as ``np.rot90(a, 1)``: (row, column) -> (column, -row). Films whose
orientation names A or P (laterals, which the gate refuses by their view) or is missing,
malformed or oblique on both axes are left to the pixel check.

**Pixels.** :func:`pixel_turn` compares the film, shrunk to 16 x 16 and standardised, with
:data:`UPRIGHT_TEMPLATE` in its four quarter turns (Pearson correlation, its magnitude). The template is the
mean of the 614 standardised NIH films of ``shared/data/nih-extra`` (training films; values x 40,
rounded): bright abdomen and mediastinum below, dark lungs either side, dark corners above. On
the validation films (each turned 0/90/180/270 degrees, plain and mirrored; bench/orientation.py
prints the table) the best turn is the right one for about 99 % of films; a film is refused only
when another turn matches the template by at least :data:`MIN_MATCH` and beats upright by at
least :data:`MIN_MARGIN` (the conservative side: an unsure film is scored as it is). So, on
1,071 validation films (``--per-set 300``): upright films refused 0.09 % (1 film; mirrored 0);
films stored turned 90 / 180 / 270 degrees counter-clockwise refused 95.7 / 94.0 / 95.5 %
(mirrored: 94.9 / 93.7 / 95.5 %), the rest scored as they are; of 2,558 further upright RSNA
films (the rest of rsna-normals and rsna-pneumonia), none refused. (A margin alone refused 0.65 % of
upright films at 0.2, 0.37 % at 0.3: small collimated films on wide blank borders, which match
no turn well.) A left-right mirror looks the same to this check.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from PIL import Image
from pydicom import Dataset

#: patient directions in the image plane of a frontal film: x toward the patient's left, y toward
#: the feet (PS3.3 C.7.6.1.1.1 letters)
_DIRECTIONS: dict[str, tuple[int, int]] = {"L": (1, 0), "R": (-1, 0), "F": (0, 1), "H": (0, -1)}
_FEET = (0, 1)

#: the mean upright chest film (16 x 16, standardised, x 40): see the module docstring
UPRIGHT_TEMPLATE = np.array([
    [-111, -106, -100, -94, -79, -49, -12, 10, 11, -10, -45, -76, -90, -95, -98, -102],
    [-89, -74, -65, -59, -49, -30, -5, 14, 14, -3, -27, -45, -53, -56, -63, -79],
    [-52, -34, -23, -21, -22, -20, -9, 8, 10, -8, -21, -20, -17, -16, -23, -44],
    [-22, -4, 4, -2, -16, -25, -17, 4, 7, -16, -29, -20, -3, 6, 1, -18],
    [-3, 11, 14, 1, -23, -37, -25, 4, 9, -21, -40, -30, -4, 13, 12, -3],
    [3, 14, 17, -1, -30, -43, -26, 8, 15, -18, -44, -36, -7, 14, 14, 1],
    [1, 12, 15, -4, -32, -41, -20, 16, 24, -7, -37, -36, -10, 13, 12, -2],
    [-6, 7, 12, -6, -30, -33, -9, 25, 33, 7, -24, -31, -11, 10, 6, -10],
    [-14, 1, 9, -5, -23, -22, 2, 34, 42, 22, -7, -20, -9, 8, 0, -19],
    [-22, -4, 8, 0, -11, -7, 15, 43, 50, 36, 12, -5, -3, 7, -4, -26],
    [-30, -9, 9, 9, 6, 11, 30, 51, 57, 46, 28, 11, 7, 8, -8, -33],
    [-38, -13, 11, 22, 25, 32, 45, 59, 63, 55, 41, 27, 17, 10, -12, -41],
    [-46, -17, 15, 34, 43, 49, 58, 67, 69, 62, 53, 41, 28, 13, -17, -47],
    [-52, -19, 19, 43, 55, 62, 68, 73, 74, 69, 62, 52, 38, 17, -19, -53],
    [-57, -21, 21, 48, 62, 69, 74, 78, 78, 74, 68, 59, 45, 21, -20, -56],
    [-56, -19, 23, 49, 63, 71, 75, 77, 77, 74, 69, 60, 47, 23, -19, -57],
], dtype=np.float64)
TEMPLATE_SIZE = 16
#: how much better (|Pearson r|) another turn must match than upright before a film is refused
MIN_MARGIN = 0.2
#: ... and how well that turn must match at all: an atypical film (a small collimated film on a
#: wide blank border) matches no turn well, and is scored as it is
MIN_MATCH = 0.5


def _letter(value: object) -> str:
    text = str(value).strip().upper()
    return text[:1] if text else ""


def header_turn(ds: Dataset) -> int | None:
    """Quarter turns (``np.rot90``'s ``k``) that make the stored film upright, from Patient
    Orientation; 0 for an upright film; None when the header does not say (missing, empty,
    A/P, one axis given twice)."""
    values = ds.get("PatientOrientation") or []
    if isinstance(values, str):
        values = values.split("\\")
    if len(values) != 2:
        return None
    letters = [_letter(v) for v in values]
    if not all(letter in _DIRECTIONS for letter in letters):
        return None
    row, col = _DIRECTIONS[letters[0]], _DIRECTIONS[letters[1]]
    if row[0] * col[0] + row[1] * col[1] != 0:
        return None
    for k in range(4):
        if col == _FEET:
            return k
        row, col = col, (-row[0], -row[1])
    return None  # unreachable: four turns bring the column through every direction


def apply_turn(image: np.ndarray, k: int) -> np.ndarray:
    """``image`` turned ``k`` quarter turns counter-clockwise (a contiguous copy; k = 0: itself)."""
    return image if k % 4 == 0 else np.ascontiguousarray(np.rot90(image, k))


def _standardised(image: np.ndarray) -> npt.NDArray[np.float64]:
    """``image`` shrunk to TEMPLATE_SIZE x TEMPLATE_SIZE (PIL bilinear, area-aware when
    shrinking), mean 0 and standard deviation 1 (0 everywhere for a flat image)."""
    small: npt.NDArray[np.float64] = np.asarray(
        Image.fromarray(np.asarray(image, dtype=np.float32), mode="F")
        .resize((TEMPLATE_SIZE, TEMPLATE_SIZE), Image.Resampling.BILINEAR), dtype=np.float64)
    centred: npt.NDArray[np.float64] = small - small.mean()
    spread = float(small.std())
    return centred / spread if spread > 0 else centred


def turn_scores(pixels: np.ndarray) -> list[float]:
    """|Pearson r| of the film turned k = 0..3 quarter turns with :data:`UPRIGHT_TEMPLATE`:
    without its sign, so that a film shown inverted (MONOCHROME2 data labelled MONOCHROME1) is
    judged by its layout, not taken for a film upside down."""
    template = _standardised(UPRIGHT_TEMPLATE)
    film = _standardised(pixels)
    return [abs(float((np.rot90(film, k) * template).mean())) for k in range(4)]


def pixel_turn(pixels: np.ndarray, min_margin: float = MIN_MARGIN, min_match: float = MIN_MATCH) -> int:
    """The quarter turns that make the film upright when the pixels clearly say so (another
    turn matches at least ``min_match`` and beats upright by ``min_margin``), else 0 (upright,
    or unsure: scored as it is)."""
    scores = turn_scores(pixels)
    best = int(np.argmax(scores))
    clear = scores[best] >= min_match and scores[best] - scores[0] >= min_margin
    return best if best and clear else 0
