"""SNOMED CT codes of the PhysioNet/CinC 2020/2021 ``#Dx:`` header lines -> abbreviation and name."""

from __future__ import annotations

import csv
import functools
from dataclasses import dataclass
from pathlib import Path

SNOMED_CSV = Path(__file__).resolve().parents[1] / "resources" / "snomed_ct.csv"


@dataclass(frozen=True)
class Diagnosis:
    """One SNOMED CT diagnosis as the challenge names it."""

    code: str
    abbreviation: str
    name: str
    scored_cinc2020: bool = False
    scored_cinc2021: bool = False
    equivalent_code: str = ""


@functools.lru_cache(maxsize=1)
def snomed_table() -> dict[str, Diagnosis]:
    """SNOMED code -> Diagnosis, from the table shipped in etp_search/resources."""
    with open(SNOMED_CSV, newline="") as f:
        return {row["snomed_code"]: Diagnosis(row["snomed_code"], row["abbreviation"], row["name"],
                                              row["scored_cinc2020"] == "1", row["scored_cinc2021"] == "1",
                                              row["equivalent_code"])
                for row in csv.DictReader(f)}


def diagnosis(code: str) -> Diagnosis:
    """Look a code up; an unknown code keeps its number (label ``snomed:<code>``) so nothing is lost."""
    code = code.strip()
    found = snomed_table().get(code)
    return found if found is not None else Diagnosis(code, f"snomed:{code}", f"SNOMED CT {code}")


def parse_dx(comments: list[str]) -> list[str]:
    """SNOMED codes of the ``Dx:`` comment line(s), in header order."""
    codes: list[str] = []
    for line in comments:
        key, _, value = line.partition(":")
        if key.strip().lower() == "dx":
            codes += [c.strip() for c in value.split(",") if c.strip()]
    return codes
