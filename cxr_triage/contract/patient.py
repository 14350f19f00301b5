"""Patient attributes every stage reads the same way."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

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


@dataclass(frozen=True, kw_only=True)
class PatientKey:
    """Who a study is of, for finding the same patient's earlier studies (PS3.3 C.7.1.1
    Patient Module): Patient ID (0010,0020), Issuer of Patient ID (0010,0021), Patient's Name
    (PN) and Birth Date (DA). PHI: compared, never logged."""

    patient_id: str
    issuer: str = ""
    name: str = ""
    birth_date: str = ""

    @classmethod
    def from_header(cls, ds: Any) -> "PatientKey | None":
        """From a DICOM header (anything with ``.get(keyword)``); None without a Patient ID."""
        patient_id = _text(ds.get("PatientID"))
        if not patient_id:
            return None
        return cls(patient_id=patient_id, issuer=_text(ds.get("IssuerOfPatientID")),
                   name=_text(ds.get("PatientName")), birth_date=_text(ds.get("PatientBirthDate")))

    def same_id(self, other: "PatientKey") -> bool:
        """Same Patient ID, and the same issuer where both name one (an issuer on one side only
        does not tell them apart: many senders leave it empty)."""
        if self.patient_id != other.patient_id:
            return False
        return not (self.issuer and other.issuer) or self.issuer == other.issuer

    def mismatches(self, other: "PatientKey") -> list[str]:
        """Which of "name", "birth_date" differ where both sides have a value (names compared
        without case, spaces or trailing empty components)."""
        out = []
        if self.name and other.name and _pn(self.name) != _pn(other.name):
            out.append("name")
        if self.birth_date and other.birth_date and self.birth_date != other.birth_date:
            out.append("birth_date")
        return out


def _text(value: object) -> str:
    return str(value if value is not None else "").strip()


def _pn(name: str) -> str:
    """A PN compared: alphabetic group only, upper case, no spaces, trailing ^ dropped."""
    return name.split("=")[0].upper().replace(" ", "").rstrip("^")
