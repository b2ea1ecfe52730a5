"""--where filters: parsing, errors, and masks equal to brute force over a seeded store."""

from __future__ import annotations

import numpy as np
import pytest

from indexing.errors import FilterError
from indexing.build import build_index
from indexing.faiss_index import normalized, search
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
            "labels in AFLT,1AVB": np.array([bool({"AFLT", "1AVB"} & set(lab)) for lab in labels]),  # as labels=
            "labels=AFIB": np.array(["AFIB" in lab for lab in labels]),
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


def test_id_filters_use_the_id_map_not_every_id(tmp_path, monkeypatch):
    """Issue 13: an id filter read ``store.ids`` in full (5M Python strings) on first use; now it
    looks ids up in the store's numpy id map and compares against its byte keys. Ids of different
    widths and a non-ASCII one: the answers equal Python's own comparisons."""
    ids = ["b7", "A10", "a1", "zz-long-record-0003", "é9", "b70", "B7", "c"]
    rng = np.random.default_rng(1)
    store = EmbeddingStore.create(tmp_path / "s.h5", 4, {}, has_text=False)
    store.append(ids[:5], rng.normal(size=(5, 4)).astype(np.float32))
    store.compact()
    store.append(ids[5:], rng.normal(size=(3, 4)).astype(np.float32))  # a part after the main file
    reader = EmbeddingStore.open(store.path)
    monkeypatch.setattr(EmbeddingStore, "ids", property(lambda s: pytest.fail("an id filter read every id")))
    arr = np.array(ids, dtype=object)
    cases = {
        "id=b7": arr == "b7",
        "id in b7,c,nope,B": np.isin(arr, ["b7", "c"]),
        "id!=b7": arr != "b7",
        "id not in a1,é9": ~np.isin(arr, ["a1", "é9"]),
        "id<b7": np.array([i < "b7" for i in ids]),
        "id>=b": np.array([i >= "b" for i in ids]),
        "id>zz": np.array([i > "zz" for i in ids]),
        "id~B7": np.array(["b7" in i.lower() for i in ids]),
        "id~LONG": np.array(["long" in i.lower() for i in ids]),
        "id~É": np.array(["é" in i.lower() for i in ids]),
    }
    for expr, want in cases.items():
        assert filter_rows(reader, expr).tolist() == want.tolist(), expr
    ascii_only = EmbeddingStore.create(tmp_path / "a.h5", 4, {}, has_text=False)
    ascii_only.append(["Ab1", "ab2", "x"], rng.normal(size=(3, 4)).astype(np.float32))
    assert filter_rows(ascii_only, "id~AB").tolist() == [True, True, False]  # numpy path
    reader.close(), store.close(), ascii_only.close()


def test_label_filter_parses_each_distinct_label_set_once(seeded, monkeypatch):
    """Issue 13: a label filter lowered and scanned every row's JSON in Python, then parsed every
    candidate row; now rows are de-duplicated in numpy and only distinct label sets are parsed."""
    from indexing import filters

    store, d = seeded
    filters._CACHE.pop(store, None)
    calls = []
    real = filters.json.loads
    monkeypatch.setattr(filters.json, "loads", lambda s, *a, **k: (calls.append(s), real(s, *a, **k))[1])
    want = np.array(["AFIB" in lab for lab in d["labels"]])
    assert np.array_equal(filter_rows(store, "label=afib"), want)
    distinct = {tuple(sorted(lab)) for lab in d["labels"]}
    assert len(calls) == len(distinct) < 20  # 400 rows, a dozen label sets (~100 AFIB rows)
    assert np.array_equal(filter_rows(store, "label not in AFIB,NORM"),
                          np.array([not ({"AFIB", "NORM"} & set(lab)) for lab in d["labels"]]))
    assert len(calls) == len(distinct)  # the second filter parses nothing


def test_text_and_str_columns_are_matched_once_per_distinct_value(tmp_path, monkeypatch):
    """Issue 13: ``text~`` and str-column conditions ran Python over every row; now over the
    column's distinct values (reports repeat), mapped back to rows in numpy."""
    from indexing import filters

    rng = np.random.default_rng(3)
    texts = ["Sinus rhythm", "Atrial FIBRILLATION", "", "sinus tachycardia", "Fibrillation é"]
    pick = rng.integers(0, len(texts), 300)
    store = EmbeddingStore.create(tmp_path / "t.h5", 4, {}, {"site": "str"}, has_text=False)
    for a in range(0, 300, 100):
        store.append([f"r{i}" for i in range(a, a + 100)], rng.normal(size=(100, 4)).astype(np.float32),
                     texts=[texts[j] for j in pick[a:a + 100]],
                     meta={"site": [f"s{j % 2}" for j in pick[a:a + 100]]})
    seen = []
    real = filters._match_values
    monkeypatch.setattr(filters, "_match_values", lambda col, kind, w: (seen.append(len(col)), real(col, kind, w))[1])
    rows_text = np.array([texts[j] for j in pick], dtype=object)
    cases = {"text~fibrillation": np.array(["fibrillation" in t.lower() for t in rows_text]),
             "text~É": np.array(["é" in t.lower() for t in rows_text]),
             "text=Sinus rhythm": rows_text == "Sinus rhythm",
             "text in Sinus rhythm,sinus tachycardia": np.isin(rows_text, ["Sinus rhythm", "sinus tachycardia"]),
             "site=s1": pick % 2 == 1, "site~S0": pick % 2 == 0}
    for expr, want in cases.items():
        assert filter_rows(store, expr).tolist() == want.tolist(), expr
    assert seen == [5, 5, 5, 5, 2, 2]  # distinct reports / sites, not 300 rows
    store.close()
