"""The site threshold file: one site's operating point, bound to one model file by SHA-256.

A threshold that was right for one population and one model version is not automatically right
for the next, so ``cxr-triage commission`` writes the chosen threshold together with the model
file's SHA-256 and the evidence it rests on, and the worker refuses a file made for another model.

The file is JSON (stdlib to read and write, diff-able, no new dependency). This module is
imported by the worker at start: it must stay light (no numpy/scipy, no torch).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cxr_triage.config import resolve_path
from cxr_triage.contract.files import file_sha256, write_json_atomic
from cxr_triage.contract.operating_points import operating_point_name

FORMAT = "cxr-triage-site-threshold"
FORMAT_VERSION = 1


class SiteThresholdError(ValueError):
    """The file is missing, unreadable or not a valid site threshold file."""


class SiteThresholdMismatch(SiteThresholdError):
    """The file was commissioned for another model file (SHA-256 differs)."""


#: the old name of :func:`cxr_triage.contract.files.file_sha256` (tests/inference still import it)
sha256_file = file_sha256


@dataclass
class SiteThreshold:
    """What a site threshold file holds.

    threshold: score >= threshold is *suspicious* (the same rule as the model's own thresholds).
    model_sha256: SHA-256 of the ONNX file the threshold was chosen with; nothing else may use it.
    evidence: counts, sensitivity/specificity with CIs and workload saved at the threshold.
    source: SHA-256 of the labelled data the choice was made on (files and scored table).
    baseline: commissioning score distribution and decision shares, the reference for drift.
    """

    site: str
    threshold: float
    target_sensitivity: float
    confidence: float
    ci_method: str
    model_sha256: str
    model_name: str = ""
    model_version: str = ""
    model_file: str = ""
    created: str = ""
    created_by: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    baseline: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    @property
    def operating_point(self) -> str:
        """Name recorded with each result (FilmResult.operating_point, SR, logs)."""
        lb = int(round(self.confidence * 100))
        return f"site:{self.site}:{operating_point_name(self.target_sensitivity)}_lb{lb}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SiteThreshold":
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "format": str,
    "format_version": int,
    "site": str,
    "threshold": (int, float),
    "target_sensitivity": (int, float),
    "confidence": (int, float),
    "ci_method": str,
    "model_sha256": str,
}


def _validate(data: Any, where: str) -> SiteThreshold:
    if not isinstance(data, dict):
        raise SiteThresholdError(f"{where}: not a JSON object")
    problems: list[str] = []
    for key, typ in _REQUIRED.items():
        if key not in data:
            problems.append(f"missing {key!r}")
        elif isinstance(data[key], bool) or not isinstance(data[key], typ):
            problems.append(f"{key!r} has the wrong type ({type(data[key]).__name__})")
    if problems:
        raise SiteThresholdError(f"{where}: not a valid site threshold file: " + "; ".join(problems))
    if data["format"] != FORMAT:
        raise SiteThresholdError(f"{where}: format is {data['format']!r}, expected {FORMAT!r}")
    if data["format_version"] > FORMAT_VERSION:
        raise SiteThresholdError(
            f"{where}: format_version {data['format_version']} is newer than this software "
            f"understands ({FORMAT_VERSION}); upgrade cxr-triage"
        )
    if not 0.0 <= float(data["threshold"]) <= 1.0:
        raise SiteThresholdError(f"{where}: threshold {data['threshold']} is outside [0, 1]")
    for key in ("target_sensitivity", "confidence"):
        if not 0.0 < float(data[key]) < 1.0:
            raise SiteThresholdError(f"{where}: {key} {data[key]} is outside (0, 1)")
    sha = data["model_sha256"].lower()
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise SiteThresholdError(f"{where}: model_sha256 is not a 64-digit hex SHA-256")
    site = SiteThreshold.from_dict(data)
    site.threshold = float(site.threshold)
    site.model_sha256 = sha
    return site


def load_site_threshold(path: str | Path) -> SiteThreshold:
    """Read and validate a site threshold file (clear error naming the file on any problem)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise SiteThresholdError(f"site threshold file not found: {p}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SiteThresholdError(f"site threshold file {p} is not readable JSON: {exc}") from None
    return _validate(data, f"site threshold file {p}")


def write_site_threshold(site: SiteThreshold, path: str | Path) -> Path:
    """Write atomically (temp file + rename): a node must never read half a file."""
    _validate(site.to_dict(), "site threshold to write")
    return write_json_atomic(path, site.to_dict(), indent=2)


def check_matches_model(file: str | Path | SiteThreshold, model_path: str | Path,
                        model_sha256: str | None = None) -> SiteThreshold:
    """Load (if needed) and return the site threshold, or raise :class:`SiteThresholdMismatch`
    when it was commissioned for a different model file than ``model_path``.

    model_sha256: the digest of the model as loaded (the scorer has it), so the check is about
    the bytes in use even if the file on disk changed since; hashed from disk when None."""
    site = file if isinstance(file, SiteThreshold) else load_site_threshold(file)
    actual = (model_sha256 or file_sha256(model_path)).lower()
    if actual != site.model_sha256:
        made_for = " ".join(x for x in (site.model_name, site.model_version) if x) or "another model"
        where = f" ({file})" if not isinstance(file, SiteThreshold) else ""
        raise SiteThresholdMismatch(
            f"site threshold file{where} for site {site.site!r} was commissioned for {made_for} "
            f"(model SHA-256 {site.model_sha256[:16]}…), but the configured model {model_path} has "
            f"SHA-256 {actual[:16]}…. A threshold chosen for one model is not valid for another: "
            "re-run `cxr-triage commission` with this model, or configure the model it was made for."
        )
    return site


def site_threshold_from_config(cfg: Any, model_path: str | Path,
                               model_sha256: str | None = None) -> SiteThreshold | None:
    """The checked site threshold named by ``[inference] site_threshold_file``, or None when the
    key is empty. Raises :class:`SiteThresholdError` (or its Mismatch subclass) otherwise: the
    worker and ``predict`` call this at start and refuse to run on an error."""
    value = cfg.inference.site_threshold_file
    if not value:
        return None
    return check_matches_model(resolve_path(cfg, value), model_path, model_sha256)
