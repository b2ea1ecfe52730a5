"""--where filters: parsing, errors, and masks equal to brute force over a seeded store."""

from __future__ import annotations

import numpy as np
import pytest

from indexing.errors import FilterError
from indexing.faiss_index import build_index, normalized, search
from indexing.filters import Where, filter_rows, parse_where
from indexing.store import EmbeddingStore

N = 400


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("f") / "store.h5"
    store = EmbeddingStore.create(path, 16, {}, {"site": "str"}, has_text=False)
    age = rng.uniform(20, 90, N).round()
    age[rng.random(N) < 0.1] = np.nan
    sex = rng.integers(-1, 2, N)
    fold = rng.integers(1, 11, N)
    codes = ["NORM", "AFIB", "AFLT", "1AVB"]
    labels = [{c: 100.0 for c in rng.choice(codes, rng.integers(0, 3), replace=False)} for _ in range(N)]
    site = rng.choice(["a", "b", "c"], N)
    texts = [f"report {'atrial fibrillation' if 'AFIB' in lab else 'sinus rhythm'} {i}" for i, lab in enumerate(labels)]
    x = normalized(rng.standard_normal((N, 16)).astype(np.float32))
    for b in range(0, N, 100):  # several parts: filters read across them
        sl = slice(b, b + 100)
        store.append([f"id{i:03d}" for i in range(b, b + 100)], x[sl], texts=texts[sl], labels=labels[sl],
                     meta={"age": age[sl], "sex": sex[sl], "strat_fold": fold[sl], "site": site[sl].tolist()})
    yield store, {"age": age, "sex": sex, "fold": fold, "labels": labels, "site": site, "x": x, "texts": texts}
    store.close()


def test_parse_forms():
    assert parse_where("strat_fold=10") == Where("strat_fold", "=", ("10",), "strat_fold=10")
    assert parse_where(" age >= 60 ").op == ">=" and parse_where("age>=60").values == ("60",)
    assert parse_where("sex == 1").op == "="
    assert parse_where("label in [AFIB, AFLT]").values == ("AFIB", "AFLT")
    assert parse_where("Label IN (AFIB,'1AVB')") == Where("label", "in", ("AFIB", "1AVB"), "Label IN (AFIB,'1AVB')")
    assert parse_where("strat_fold not in 9,10").op == "not in"
    assert parse_where("source~records100").op == "~"
    for bad in ("strat_fold", "=10", "age>=", "age in", "age <> 3"):
        with pytest.raises(FilterError, match="e.g. strat_fold=10"):
            parse_where(bad)


def test_masks_equal_brute_force(seeded):
    store, d = seeded
    age, sex, fold, labels, site = d["age"], d["sex"], d["fold"], d["labels"], d["site"]
    with np.errstate(invalid="ignore"):
        cases = {
            "strat_fold=10": fold == 10,
            "age>=60": age >= 60,
            "age<30.5": age < 30.5,
            "sex=0": sex == 0,
            "sex!=0": (sex != 0) & (sex != -1),
            "sex=-1": sex == -1,
            "strat_fold in 9,10": np.isin(fold, [9, 10]),
            "label=AFIB": np.array(["AFIB" in lab for lab in labels]),
            "label=afib": np.array(["AFIB" in lab for lab in labels]),
            "label!=NORM": np.array(["NORM" not in lab for lab in labels]),
            "label in AFLT,1AVB": np.array([bool({"AFLT", "1AVB"} & set(lab)) for lab in labels]),
            "site=b": site == "b",
            "site in a,c": np.isin(site, ["a", "c"]),
            "text~FIBRILLATION": np.array(["AFIB" in lab for lab in labels]),
            "id in id007,id399,id500": np.isin(np.arange(N), [7, 399]),
            "id>=id390": np.arange(N) >= 390,
        }
    for expr, want in cases.items():
        assert np.array_equal(filter_rows(store, expr), want), expr
    both = filter_rows(store, ["age>=60", "label=AFIB", "strat_fold not in 9,10"])
    with np.errstate(invalid="ignore"):
        assert np.array_equal(both, (age >= 60) & cases["label=AFIB"] & ~np.isin(fold, [9, 10]))


def test_unknown_column_and_bad_values(seeded):
    store, _ = seeded
    with pytest.raises(FilterError, match="unknown column 'weight'.*columns: id, label, text, age, sex") as err:
        filter_rows(store, "weight>3")
    assert "\n" not in str(err.value)
    with pytest.raises(FilterError, match="holds float values, 'old'"):
        filter_rows(store, "age>=old")
    with pytest.raises(FilterError, match="holds int values, '1.5'"):
        filter_rows(store, "sex=1.5")
    with pytest.raises(FilterError, match="label supports"):
        filter_rows(store, "label>=AFIB")
    with pytest.raises(FilterError, match="contains"):
        filter_rows(store, "age~6")


def test_filtered_search_equals_brute_force_on_subset(seeded):
    store, d = seeded
    index, _ = build_index(store.ecg())
    mask = filter_rows(store, ["label=AFIB", "age>=40"])
    q = d["x"][:5]
    _, rows = search(index, q, 10, mask)
    s = q @ d["x"].T
    s[:, ~mask] = -np.inf
    ref = np.argsort(-s, axis=1, kind="stable")[:, :min(10, int(mask.sum()))]
    assert mask[rows].all() and np.array_equal(rows, ref)
