"""PTB-XL benchmark tasks (Strodthoff et al. 2020) and the CPSC2018 task."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from etp_search.errors import EtpError
from etp_search.labels import get_task, list_tasks, split_of
from etp_search.text import parse_scp_codes

EXPECTED_SIZES = {"all": 71, "diagnostic": 44, "subdiagnostic": 23, "superdiagnostic": 5, "form": 19,
                  "rhythm": 12, "cpsc2018": 9}


def _independent_counts(db_csv: Path, st_csv: Path) -> dict[str, pd.Series]:
    """Per-class record counts per task, from a long table (one row per record x code)."""
    db = pd.read_csv(db_csv, usecols=["ecg_id", "scp_codes"])
    st = pd.read_csv(st_csv, index_col=0)
    db["code"] = db["scp_codes"].map(lambda s: list(ast.literal_eval(s).keys()))
    long = db.explode("code").dropna(subset=["code"]).merge(st, left_on="code", right_index=True, how="left")
    views = {
        "all": long.assign(cls=long["code"]),
        "diagnostic": long[long["diagnostic"] == 1].assign(cls=lambda d: d["code"]),
        "subdiagnostic": long[long["diagnostic"] == 1].assign(cls=lambda d: d["diagnostic_subclass"]),
        "superdiagnostic": long[long["diagnostic"] == 1].assign(cls=lambda d: d["diagnostic_class"]),
        "form": long[long["form"] == 1].assign(cls=lambda d: d["code"]),
        "rhythm": long[long["rhythm"] == 1].assign(cls=lambda d: d["code"]),
    }
    out = {}
    for name, view in views.items():
        view = view.dropna(subset=["cls"]).drop_duplicates(["ecg_id", "cls"])
        out[name] = view.groupby("cls").size()
        out[name + ":records"] = view["ecg_id"].nunique()
    return out


def _check_counts(db_csv: Path, st_csv: Path) -> dict[str, int]:
    expected = _independent_counts(db_csv, st_csv)
    labels = [parse_scp_codes(s) for s in pd.read_csv(db_csv)["scp_codes"]]
    kept = {}
    for name in ("all", "diagnostic", "subdiagnostic", "superdiagnostic", "form", "rhythm"):
        task = get_task(name)
        y = task.matrix(labels)
        got = pd.Series(y.sum(axis=0).astype(int), index=task.classes)
        got = got[got > 0]
        pd.testing.assert_series_equal(got.sort_index(), expected[name].sort_index().astype(int),
                                       check_names=False, check_index_type=False)
        has = np.array([task.has_labels(lab) for lab in labels])
        assert has.sum() == expected[name + ":records"] == (y.sum(axis=1) > 0).sum()
        kept[name] = int(has.sum())
    return kept


@pytest.mark.needs_shared_data
def test_task_counts_match_an_independent_count_on_full_ptbxl(shared_ptbxl: Path) -> None:
    kept = _check_counts(shared_ptbxl / "ptbxl_database.csv", shared_ptbxl / "scp_statements.csv")
    assert kept["all"] == 21837  # every record has at least one statement
    # min_samples=0 keeps a class when it occurs once; on the full table every class occurs
    labels = [parse_scp_codes(s) for s in pd.read_csv(shared_ptbxl / "ptbxl_database.csv")["scp_codes"]]
    for name in ("all", "diagnostic", "subdiagnostic", "superdiagnostic", "form", "rhythm"):
        assert (get_task(name).matrix(labels).sum(axis=0) > 0).all(), name


def test_task_counts_on_shipped_examples(example_ptbxl: Path) -> None:
    kept = _check_counts(example_ptbxl / "ptbxl_database.csv", example_ptbxl / "scp_statements.csv")
    assert kept["superdiagnostic"] == 49  # one example record has no diagnostic superclass


def test_task_sizes_and_sorted_classes() -> None:
    assert list_tasks() == list(EXPECTED_SIZES)
    for name, size in EXPECTED_SIZES.items():
        task = get_task(name)
        assert len(task.classes) == size and set(task.description) == set(task.classes)
        if name != "cpsc2018":  # MultiLabelBinarizer order
            assert task.classes == sorted(task.classes)
    assert get_task("superdiagnostic").classes == ["CD", "HYP", "MI", "NORM", "STTC"]


def test_vector_ignores_likelihood_and_aggregates() -> None:
    labels = {"IMI": 35.0, "ILMI": 0.0, "SR": 0.0, "PVC": 100.0}
    sub = get_task("subdiagnostic")
    assert [c for c, v in zip(sub.classes, sub.vector(labels)) if v] == ["IMI"]
    sup = get_task("superdiagnostic")
    assert sup.vector(labels).tolist() == [0, 0, 1, 0, 0]
    assert get_task("form").vector(labels).sum() == 1 and get_task("rhythm").vector(labels).sum() == 1
    assert get_task("rhythm").has_labels({"NORM": 100.0}) is False
    assert sup.matrix([labels, {}]).shape == (2, 5) and sup.matrix([labels, {}]).dtype == np.float32


def test_both_diagnostic_and_form_statement_counts_in_both_tasks() -> None:
    # NDT is flagged diagnostic and form in scp_statements.csv, as in the benchmark
    assert get_task("diagnostic").has_labels({"NDT": 100.0}) and get_task("form").has_labels({"NDT": 100.0})
    assert get_task("subdiagnostic").vector({"NDT": 100.0})[get_task("subdiagnostic").classes.index("STTC")] == 1


def test_cpsc_task_accepts_reference_names_and_cinc_abbreviations() -> None:
    task = get_task("cpsc2018")
    assert task.classes[0] == "NORM" and task.classes[-1] == "STE"
    np.testing.assert_array_equal(task.vector({"SNR": 1.0, "IAVB": 1.0, "VEB": 1.0}),
                                  task.vector({"NORM": 1.0, "I-AVB": 1.0, "PVC": 1.0}))
    assert task.vector({"CRBBB": 1.0})[task.classes.index("RBBB")] == 1


def test_split_of_and_unknown_task() -> None:
    assert [split_of(f) for f in (1, 8, 9, 10, -1)] == ["train", "train", "val", "test", "unknown"]
    with pytest.raises(EtpError, match="known tasks: all, diagnostic"):
        get_task("superdiag")


def test_cpsc_task_on_ptbxl_codes_finds_af_avb_and_st_classes(example_ptbxl) -> None:
    """`--task cpsc2018` on a PTB-XL store: every class with PTB-XL records gets them (AF, I-AVB,
    STD and STE had none, so they were skipped as 'no positives' and the macro AUC left them out)."""
    import ast

    import pandas as pd

    task = get_task("cpsc2018")
    codes = [ast.literal_eval(s) for s in pd.read_csv(example_ptbxl / "ptbxl_database.csv")["scp_codes"]]
    y = task.matrix(codes)
    col = {c: y[:, task.classes.index(c)] for c in task.classes}
    for cls, code in (("AF", "AFIB"), ("I-AVB", "1AVB"), ("STD", "STD_"), ("STE", "STE_"), ("RBBB", "CRBBB")):
        has = np.array([code in c for c in codes])
        np.testing.assert_array_equal(col[cls].astype(bool), has, err_msg=cls)
    assert int(col["AF"].sum()) == 4  # the 4 AFIB records of the shipped example
    np.testing.assert_array_equal(task.vector({"AFIB": 100.0, "STE_": 50.0}), task.vector({"AF": 1.0, "STE": 1.0}))
