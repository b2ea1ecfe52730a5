"""Text sources: English composed from SCP codes, safe parsing of scp_codes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from etp_search.errors import DataError
from etp_search.text import check_text_source, compose_scp_report, load_scp_statements, parse_scp_codes


def test_order_rhythm_then_diagnostic_by_likelihood_then_form() -> None:
    codes = {"PVC": 100.0, "LVH": 50.0, "IMI": 100.0, "SR": 0.0}
    assert compose_scp_report(codes) == ("sinus rhythm, inferior myocardial infarction, "
                                         "left ventricular hypertrophy, ventricular premature complex")


def test_likelihood_below_50_is_possible_and_zero_is_certain() -> None:
    assert compose_scp_report({"AFIB": 15.0}) == "possible atrial fibrillation"
    assert compose_scp_report({"AFIB": 0.0}) == "atrial fibrillation"
    assert compose_scp_report({"ASMI": 35.0, "NORM": 80.0}) == "normal ECG, possible anteroseptal myocardial infarction"


def test_unknown_codes_and_empty() -> None:
    assert compose_scp_report({}) == ""
    assert compose_scp_report({"NOTACODE": 100.0, "SR": 0.0}) == "sinus rhythm"


def test_real_rows_compose_from_their_own_statements(example_ptbxl: Path) -> None:
    st = load_scp_statements(example_ptbxl / "scp_statements.csv")
    df = pd.read_csv(example_ptbxl / "ptbxl_database.csv")
    for literal in df["scp_codes"]:
        codes = parse_scp_codes(literal)
        text = compose_scp_report(codes, st)
        assert text and all(st.loc[c, "description"] in text for c in codes)


def test_parse_scp_codes_never_evaluates_code() -> None:
    assert parse_scp_codes("{'NORM': 100.0, 'SR': 0.0}") == {"NORM": 100.0, "SR": 0.0}
    assert parse_scp_codes("") == {}
    with pytest.raises(ValueError):
        parse_scp_codes("__import__('os').getcwd()")
    with pytest.raises(ValueError):
        parse_scp_codes("['NORM']")


def test_check_text_source_names_the_options() -> None:
    check_text_source("column:report_en", ("report",), ("report_en",))
    with pytest.raises(DataError, match="known: report, column:<name>"):
        check_text_source("scp_de", ("report",))
