"""Report text sources: the raw report, English composed from SCP codes, or a user column.

PTB-XL's ``report`` column is mostly German (some English and Swedish) and partly machine
generated. ``scp_en`` composes an English report from the record's SCP-ECG statements instead,
using the ``description`` column of scp_statements.csv, in a fixed order:

1. rhythm statements, 2. diagnostic statements, 3. form-only statements
   (a statement flagged both diagnostic and form counts as diagnostic);
within a group by likelihood, highest first, ties in the order of scp_statements.csv.

Likelihoods: PTB-XL gives 0 when the likelihood is unknown, which the annotators used for
statements they did not qualify, so 0 is treated as certain; a likelihood strictly between 0
and 50 is phrased "possible <description>". Statements are joined with ", ".
"""

from __future__ import annotations

import ast
import functools
import logging
from pathlib import Path
from typing import Mapping

import pandas as pd

from etp_search.errors import DataError

logger = logging.getLogger(__name__)

RESOURCES = Path(__file__).resolve().parent / "resources"
#: scp_statements.csv shipped with the package (PTB-XL 1.0.1, CC BY 4.0).
SCP_STATEMENTS_CSV = RESOURCES / "scp_statements.csv"

#: Text sources of the readers (``column:<name>`` selects any table column).
TEXT_SOURCES = ("report", "scp_en", "column:<name>")
DEFAULT_TEXT_SOURCE = "scp_en"
#: Likelihood below which a statement is phrased as possible (0 means "unknown": certain).
POSSIBLE_BELOW = 50.0

_GROUP_ORDER = ("rhythm", "diagnostic", "form")


@functools.lru_cache(maxsize=4)
def _load_statements(path: str) -> pd.DataFrame:
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p} not found; PTB-XL's scp_statements.csv must sit beside ptbxl_database.csv")
    try:
        df = pd.read_csv(p, index_col=0)
    except Exception as exc:  # noqa: BLE001 - empty, binary or not CSV: pandas raises several types
        raise DataError(f"{p} cannot be read as CSV ({type(exc).__name__}); use the scp_statements.csv of PTB-XL") from None
    for col in ("description", "diagnostic", "form", "rhythm", "diagnostic_class", "diagnostic_subclass"):
        if col not in df.columns:
            raise DataError(f"{p} has no column '{col}'; use the scp_statements.csv of PTB-XL")
    # Every statement's wording becomes report text: a blank one would read "nan", a repeated code is ambiguous.
    blank = [str(c) for c, d in df["description"].items() if not isinstance(d, str) or not d.strip()]
    if blank:
        raise DataError(f"{p} has no description for {', '.join(blank[:5])}; use the scp_statements.csv of PTB-XL")
    if df.index.duplicated().any():
        raise DataError(f"{p} lists code {df.index[df.index.duplicated()][0]} twice; use the scp_statements.csv of PTB-XL")
    for col in ("diagnostic", "form", "rhythm"):  # flags 1 or empty; text would silently change statement groups
        if pd.to_numeric(df[col], errors="coerce").isna().sum() != df[col].isna().sum():
            raise DataError(f"{p} column '{col}' holds values other than 1 or empty; use the scp_statements.csv of PTB-XL")
    return df


def load_scp_statements(path: str | Path | None = None) -> pd.DataFrame:
    """scp_statements.csv indexed by SCP code (default: the copy shipped in etp_search/resources)."""
    return _load_statements(str(Path(path) if path is not None else SCP_STATEMENTS_CSV)).copy()


#: Longest ``scp_codes`` text parsed: PTB-XL's longest is ~120 characters. Nested input far longer
#: (a 200k-deep ``-(-(...))``) exhausts the parser's stack; it is refused before parsing.
MAX_SCP_CODES_CHARS = 10_000


def parse_scp_codes(literal: str) -> dict[str, float]:
    """Parse PTB-XL's ``scp_codes`` (a Python dict literal of code -> likelihood) safely, never with eval.

    Codes must be non-empty strings and likelihoods numbers in 0..100 (PTB-XL uses 0 for "unknown").

    Raises:
        ValueError: when the text is not such a dict literal (a one-line reason).
    """
    if not isinstance(literal, str) or not literal.strip():
        return {}
    if len(literal) > MAX_SCP_CODES_CHARS:
        raise ValueError(f"scp_codes is {len(literal)} characters long, at most {MAX_SCP_CODES_CHARS} are parsed")
    try:
        value = ast.literal_eval(literal)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as exc:
        raise ValueError(f"scp_codes is not a dict literal ({type(exc).__name__}): {literal[:60]!r}") from None
    if not isinstance(value, dict):
        raise ValueError(f"scp_codes is not a dict literal: {literal[:60]!r}")
    out: dict[str, float] = {}
    for code, likelihood in value.items():
        if not isinstance(code, str) or not code.strip():
            raise ValueError(f"scp_codes has the code {code!r}; codes are SCP statement names")
        if isinstance(likelihood, bool) or not isinstance(likelihood, (int, float)) \
                or not 0.0 <= likelihood <= 100.0:
            raise ValueError(f"scp_codes gives {code!r} the likelihood {likelihood!r}; expected a number 0..100")
        out[code] = float(likelihood)
    return out


def _group(row: pd.Series) -> int:
    if row.get("rhythm") == 1.0:
        return 0
    if row.get("diagnostic") == 1.0:
        return 1
    return 2


# id(statements) -> (statements, code -> (group, csv row, description)); the frame is kept so its
# id cannot be reused. Looking codes up in pandas per record cost more than reading the signal.
_LOOKUPS: dict[int, tuple[pd.DataFrame, dict[str, tuple[int, int, str]]]] = {}


def _lookup(statements: pd.DataFrame) -> dict[str, tuple[int, int, str]]:
    hit = _LOOKUPS.get(id(statements))
    if hit is not None and hit[0] is statements:
        return hit[1]
    table = {str(code): (_group(row), i, str(row["description"]))
             for i, (code, row) in enumerate(statements.iterrows())}
    if len(_LOOKUPS) > 8:
        _LOOKUPS.clear()
    _LOOKUPS[id(statements)] = (statements, table)
    return table


def _phrase(description: str, likelihood: float) -> str:
    if 0.0 < likelihood < POSSIBLE_BELOW:
        return f"possible {description}"
    return description


def compose_scp_report(scp_codes: Mapping[str, float], statements: pd.DataFrame | None = None) -> str:
    """Compose an English report from SCP codes (order and phrasing: see the module docstring).

    Args:
        scp_codes: SCP code -> likelihood (0..100; 0 = unknown, read as certain).
        statements: scp_statements.csv indexed by code; default the shipped copy.

    Returns:
        E.g. ``"sinus rhythm, normal ECG"``; "" when no code is known.
    """
    return ", ".join(text for _, text in scp_phrases(scp_codes, statements))


def scp_phrases(scp_codes: Mapping[str, float], statements: pd.DataFrame | None = None) -> list[tuple[str, str]]:
    """(code, phrase) of each known statement, in report order: the pieces ``compose_scp_report`` joins."""
    if statements is None:
        statements = _load_statements(str(SCP_STATEMENTS_CSV))
    lookup = _lookup(statements)
    items = []
    for code, likelihood in scp_codes.items():
        entry = lookup.get(code)
        if entry is None:
            logger.debug("SCP code %r not in scp_statements.csv; left out of the text", code)
            continue
        group, order, description = entry
        lk = float(likelihood) if likelihood == likelihood else 0.0  # NaN -> unknown
        certainty = 100.0 if lk == 0.0 else lk
        items.append((group, -certainty, order, code, _phrase(description, lk)))
    items.sort()
    return [(code, text) for *_, code, text in items]


def check_text_source(source: str, available: tuple[str, ...], columns: tuple[str, ...] = ()) -> None:
    """Fail with one line when a text source is unknown or names an absent column."""
    if source.startswith("column:"):
        name = source[len("column:"):]
        if name not in columns:
            raise DataError(f"text source '{source}': no column '{name}' (columns: {', '.join(columns) or 'none'})")
        return
    if source not in available:
        raise DataError(f"unknown text source '{source}'; known: {', '.join(available)}, column:<name>")
