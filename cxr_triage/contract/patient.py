"""Patient attributes every stage reads the same way."""

from __future__ import annotations

import re

_AGE = re.compile(r"^\s*(\d{1,3})\s*([DWMY]?)\s*$")


def parse_age_years(value: object) -> float | None:
    """Patient's Age (VR AS, PS3.5 6.2: "045Y", "006M", "003W", "010D") -> years.

    Bare numbers ("45", as in manifests) read as years; anything else (empty, "abc", None)
    gives None, never an error."""
    m = _AGE.match(str(value if value is not None else ""))
    if not m:
        return None
    number, unit = int(m.group(1)), (m.group(2) or "Y").upper()
    return {"D": number / 365.25, "W": number * 7 / 365.25, "M": number / 12.0, "Y": float(number)}[unit]
