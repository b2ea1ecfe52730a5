"""FAISS layer: exact and IVF search against brute force, in-FAISS filters, persistence, updates, GPU choice."""

from __future__ import annotations

import json
import logging

import faiss
import numpy as np
import pytest

import indexing.faiss_index as fi
import indexing.gpu as gpu
from indexing.errors import IndexingError, IndexStaleError, StoreError
from indexing.build import build_index
from indexing.recall import measure_recall
from indexing.faiss_index import normalized, search, update_index
from indexing.index_files import build_or_update, load_index, save_index
from indexing.plan import default_nlist
from indexing.store import EmbeddingStore
from indexing.view import SearchView

faiss.omp_set_num_threads(1)  # tests share 2 cores with other jobs


def _clustered(n: int, d: int = 32, clusters: int = 50, seed: int = 0) -> np.ndarray:
    """Normalised vectors around a few centres, like class-structured ECG embeddings."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, d)).astype(np.float32)
    return normalized(x)


def _brute(q: np.ndarray, x: np.ndarray, k: int, allowed: np.ndarray | None = None):
    s = normalized(q) @ normalized(x).T
    if allowed is not None:
        s[:, ~allowed] = -np.inf
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, axis=1), order


def test_exact_search_equals_brute_force():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3000, 32)).astype(np.float32)  # not normalised: build/search normalise
    q = rng.standard_normal((25, 32)).astype(np.float32)
    index, info = build_index(x)
    assert info["factory"] == "Flat" and info["recall_at_10"] == 1.0 and index.ntotal == 3000
    scores, rows = search(index, q, 10)
    ref_s, ref_r = _brute(q, x, 10)
    assert np.array_equal(rows, ref_r)
    np.testing.assert_allclose(scores, ref_s, atol=1e-5)


@pytest.mark.parametrize("as_rows", [False, True])
def test_filtered_search_equals_brute_force_on_subset(as_rows):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2000, 16)).astype(np.float32)
    q = rng.standard_normal((10, 16)).astype(np.float32)
    allowed = rng.random(2000) < 0.1
    index, _ = build_index(x)
    _, rows = search(index, q, 10, np.flatnonzero(allowed) if as_rows else allowed)
    _, ref = _brute(q, x, 10, allowed)
    assert allowed[rows].all() and np.array_equal(rows, ref)


def test_k_larger_than_allowed_rows_or_store():
    x = _clustered(50, d=8)
    index, _ = build_index(x)
    scores, rows = search(index, x[:3], 500)
    assert rows.shape == (3, 50) and (rows >= 0).all()
    assert np.array_equal(np.sort(rows[0]), np.arange(50))
    allowed = np.zeros(50, bool)
    allowed[[3, 17, 40]] = True
    scores, rows = search(index, x[:2], 10, allowed)
    assert rows.shape == (2, 3) and set(rows[0]) == {3, 17, 40} and np.isfinite(scores).all()
    _, rows = search(index, x[:2], 10, np.zeros(50, bool))
    assert rows.shape == (2, 0)


def test_filter_of_wrong_length_is_an_error():
    index, _ = build_index(_clustered(20, d=8))
    with pytest.raises(IndexingError, match="out of date"):
        search(index, _clustered(1, d=8), 5, np.ones(21, bool))


def test_ivf_reaches_its_stored_recall_on_fresh_queries():
    x = _clustered(6000)
    index, info = build_index(x, factory="IVF64,Flat", recall_queries=200)
    assert info["nlist"] == 64 and info["nprobe"] >= 1 and 0.95 <= info["recall_at_10"] <= 1.0
    assert fi._ivf(index).nprobe == info["nprobe"]
    fresh = measure_recall(index, x, nq=200, seed=7)  # other queries than the build used
    assert fresh >= info["recall_at_10"] - 0.05


def test_auto_switches_to_ivf_past_threshold():
    x = _clustered(3000)
    _, info = build_index(x, ivf_threshold=2000, recall_queries=100)
    assert info["factory"].startswith("IVF") and info["factory_requested"] == "auto"
    assert info["nlist"] == default_nlist(3000)


def test_ivf_selective_filter_returns_every_allowed_row():
    """Few allowed rows spread over many lists: nprobe widens instead of returning too few."""
    x = _clustered(4000)
    index, info = build_index(x, factory="IVF64,Flat", nprobe=1, recall_queries=50)
    allowed = np.zeros(4000, bool)
    allowed[np.random.default_rng(3).choice(4000, 8, replace=False)] = True
    _, rows = search(index, x[:4], 5, allowed)
    _, ref = _brute(x[:4], x, 5, allowed)
    assert rows.shape == (4, 5) and np.array_equal(rows, ref)


def test_pq_index_by_factory_string():
    x = _clustered(3000, d=16)
    index, info = build_index(x, factory="IVF16,PQ4x4", recall_queries=100)
    assert info["factory"] == "IVF16,PQ4x4" and 0.0 < info["recall_at_10"] <= 1.0
    _, rows = search(index, x[:2], 5)
    assert rows.shape == (2, 5)


def test_bad_factory_names_the_fix():
    with pytest.raises(IndexingError, match="unknown FAISS factory 'NoSuchIndex'; use 'auto'"):
        build_index(_clustered(100, d=8), factory="NoSuchIndex")
    with pytest.raises(IndexingError) as err:
        fi.check_factory("garbage", 256)
    assert str(err.value) == "unknown FAISS factory 'garbage'; use 'auto', 'Flat', 'IVF1024,Flat' or 'IVF4096,PQ32'"
    with pytest.raises(IndexingError, match=r"does not fit 256-d vectors \(The dimension") as err:
        fi.check_factory("IVF64,PQ33", 256)
    assert "Error in" not in str(err.value) and ".cpp" not in str(err.value)
    fi.check_factory("auto", 256, 3)
    fi.check_factory("IVF4,Flat", 256, 200)


def test_ivf_with_more_lists_than_rows_is_one_line():
    with pytest.raises(IndexingError) as err:
        fi.check_factory("IVF4096,Flat", 256, 50)
    assert str(err.value) == ("IVF4096 needs at least 4096 rows to train (the store has 50); "
                              "use --factory auto or fewer lists, e.g. IVF1")
    # build_index checks too: faiss's own RuntimeError (with its C++ signature) never escapes
    with pytest.raises(IndexingError, match=r"IVF64 needs at least 64 rows to train \(the store has 50\)"):
        build_index(_clustered(50, d=8), factory="IVF64,Flat")
    with pytest.raises(IndexingError, match="PQ codes that need at least 256 rows"):
        build_index(_clustered(100, d=8), factory="IVF2,PQ4")


def test_index_path_that_is_a_folder(tmp_path):
    x = _clustered(50, d=8)
    index, info = build_index(x)
    with pytest.raises(IndexingError, match=f"{tmp_path} is a folder; pass a file path such as {tmp_path}/"):
        save_index(index, tmp_path, info)
    with pytest.raises(IndexingError, match="is a folder; pass a file path"):
        load_index(tmp_path, "u", 50)
    store = _store(tmp_path, x)
    with pytest.raises(IndexingError, match="is a folder; pass a file path"):
        build_or_update(store, "ecg", index_path=tmp_path)
    with pytest.raises(IndexingError, match="is a folder; pass a file path"):
        SearchView.open(store, "ecg", index_path=tmp_path)
    store.close()


def test_empty_store_is_named_before_any_index_work(tmp_path):
    store = EmbeddingStore.create(tmp_path / "empty.h5", 8, {})
    with pytest.raises(StoreError, match=r"store .*empty.h5 is empty; index a dataset into it first"):
        build_or_update(store, "ecg")
    with pytest.raises(StoreError, match=r"store .*empty.h5 is empty; index a dataset into it first"):
        SearchView.open(store, "ecg")
    with pytest.raises(StoreError, match="is empty; index a dataset into it first"):
        store.check_not_empty()
    from indexing.filters import filter_rows
    with pytest.raises(StoreError, match="is empty; index a dataset into it first"):
        filter_rows(store, ["age>=60"])
    with pytest.raises(IndexingError, match="the index is empty"):
        search(faiss.IndexFlatIP(8), np.ones((1, 8), np.float32), 10)
    store.close()


def test_save_load_and_stale_or_corrupt_detection(tmp_path):
    x = _clustered(500, d=16)
    index, info = build_index(x)
    path = tmp_path / "ecg.faiss"
    save_index(index, path, dict(info, store_uuid="u1", which="ecg"))
    side = json.loads((tmp_path / "ecg.faiss.json").read_text())
    assert side["n_rows"] == 500 and side["store_uuid"] == "u1" and side["factory"] == "Flat"
    assert side["sha256"] == __import__("hashlib").sha256(path.read_bytes()).hexdigest()
    loaded, linfo = load_index(path, "u1", 500)
    assert np.array_equal(search(loaded, x[:3], 5)[1], search(index, x[:3], 5)[1])
    with pytest.raises(IndexStaleError, match="another store"):
        load_index(path, "u2", 500)
    with pytest.raises(IndexStaleError, match="holds 500 rows but the store has 400"):
        load_index(path, "u1", 400)
    with pytest.raises(IndexStaleError, match="store has 600"):
        load_index(path, "u1", 600)
    assert load_index(path, "u1", 600, allow_behind=True)[0].ntotal == 500
    path.write_bytes(path.read_bytes()[:1000])  # an interrupted copy
    with pytest.raises(IndexStaleError, match="rebuild") as err:
        load_index(path, "u1", 500)
    assert "\n" not in str(err.value)
    garbage = tmp_path / "garbage.faiss"
    garbage.write_bytes(b"x" * 64)
    (tmp_path / "garbage.faiss.json").write_text(json.dumps(
        dict(side, file_bytes=64, sha256=__import__("hashlib").sha256(b"x" * 64).hexdigest())))
    with pytest.raises(IndexStaleError, match="corrupt"):
        load_index(garbage, "u1", 500)
    with pytest.raises(IndexStaleError, match="no index"):
        load_index(tmp_path / "absent.faiss", "u1", 500)


@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat"])
def test_update_index_adds_without_rebuilding(factory):
    x = _clustered(1200, d=16)
    index, info = build_index(x[:1000], factory=factory, recall_queries=50)
    update_index(index, x[1000:], 1000)
    assert index.ntotal == 1200
    _, rows = search(index, x[1100:1105], 1, nprobe=16)
    assert rows[:, 0].tolist() == list(range(1100, 1105))
    with pytest.raises(IndexStaleError, match="holds 1200 rows"):
        update_index(index, x[:5], 1000)


def _store(tmp_path, x, t=None):
    s = EmbeddingStore.create(tmp_path / "store.h5", x.shape[1], {"checkpoint_sha256": "c"})
    s.append([f"r{i}" for i in range(len(x))], x, x[::-1] if t is None else t)
    return s


def test_build_or_update_builds_updates_and_rebuilds(tmp_path, caplog):
    x = _clustered(900, d=16)
    store = _store(tmp_path, x[:600])
    index, info = build_or_update(store, "ecg")
    path = tmp_path / "store.h5.ecg.faiss"
    assert path.exists() and info["n_rows"] == 600 and info["store_uuid"] == store.uuid and info["which"] == "ecg"
    store.append([f"r{i}" for i in range(600, 900)], x[600:], x[600:])
    index, info = build_or_update(store, "ecg")  # incremental: no rebuild
    assert index.ntotal == 900 and info["added_since_build"] == 300
    _, rows = search(index, x[[650, 899]], 1)
    assert rows[:, 0].tolist() == [650, 899]
    tindex, tinfo = build_or_update(store, "text")
    assert np.array_equal(search(tindex, x[:1], 1)[1], [[599]])  # text vectors were x reversed
    path.write_bytes(b"corrupt")
    with caplog.at_level(logging.WARNING, logger="indexing.index_files"):
        index, info = build_or_update(store, "ecg")
    assert "rebuilding" in caplog.text and "damaged" in caplog.text
    assert index.ntotal == 900 and info["added_since_build"] == 0
    index, info = build_or_update(store, "ecg", ivf_threshold=800)  # the store crossed the IVF threshold
    assert info["factory"].startswith("IVF")
    store.append([f"n{i}" for i in range(2800)], np.tile(x, (4, 1))[:2800], np.tile(x, (4, 1))[:2800])
    index, info = build_or_update(store, "ecg", ivf_threshold=800)  # grew > 4x: IVF lists retrained
    assert info["n_rows_at_build"] == 3700 and info["added_since_build"] == 0
    index, info = build_or_update(store, "ecg", factory="Flat")  # another factory asked for
    assert info["factory"] == "Flat"
    store.close()


def test_gpu_selection_on_a_cpu_machine(monkeypatch):
    assert gpu.resolve_use_gpu(False) is False
    assert gpu.resolve_use_gpu("auto") is gpu.gpu_available()
    monkeypatch.setattr(gpu, "gpu_available", lambda: False)
    with pytest.raises(IndexingError, match="faiss-gpu"):
        gpu.resolve_use_gpu(True)
    with pytest.raises(IndexingError, match="use_gpu"):
        gpu.resolve_use_gpu("maybe")


class GpuFakeIndex:
    """Stands in for a faiss GpuIndex that, like many GPU builds, rejects IDSelectors."""

    def __init__(self, cpu):
        self.cpu, self.searches = cpu, []

    def __getattr__(self, name):
        return getattr(self.cpu, name)

    def search(self, q, k, params=None):
        if params is not None and params.sel is not None:
            raise RuntimeError("GPU index does not support IDSelector")
        self.searches.append(len(q))
        return self.cpu.search(q, k, params=params) if params is not None else self.cpu.search(q, k)


def test_gpu_path_builds_saves_from_cpu_and_falls_back_for_filters(monkeypatch, tmp_path):
    moved = []

    def fake_to_gpu(res, device, index):
        moved.append(type(index).__name__)
        return GpuFakeIndex(faiss.clone_index(index))

    monkeypatch.setattr(gpu, "gpu_available", lambda: True)
    monkeypatch.setattr(gpu, "_gpu_resources", lambda: object())
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", fake_to_gpu, raising=False)
    monkeypatch.setattr(faiss, "index_gpu_to_cpu", lambda idx: faiss.clone_index(idx.cpu), raising=False)
    x = _clustered(800, d=16)
    index, info = build_index(x, use_gpu=True)
    assert moved == ["IndexFlat"] and info["on_gpu"] and isinstance(index, GpuFakeIndex)
    _, rows = search(index, x[:3], 4)
    assert index.searches and np.array_equal(rows, _brute(x[:3], x, 4)[1])
    allowed = np.arange(800) % 2 == 1
    _, rows = search(index, x[:3], 4, allowed)  # GPU rejects the selector: CPU copy answers
    assert np.array_equal(rows, _brute(x[:3], x, 4, allowed)[1])
    save_index(index, tmp_path / "g.faiss", dict(info, store_uuid="u", which="ecg"))  # written via index_gpu_to_cpu
    loaded, linfo = load_index(tmp_path / "g.faiss", "u", 800, use_gpu=True)
    assert isinstance(loaded, GpuFakeIndex) and linfo["on_gpu"]


def test_gpu_twin_is_kept_beside_the_index_not_on_it_and_follows_updates(monkeypatch):
    """The CPU twin of a GPU index sits in indexing.gpu's weak mapping (no attribute on the SWIG
    object), is made once when a filter needs it, gets the rows added later, and goes with its index."""
    import gc

    monkeypatch.setattr(gpu, "gpu_available", lambda: True)
    monkeypatch.setattr(gpu, "_gpu_resources", lambda: object())
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", lambda res, dev, idx: GpuFakeIndex(faiss.clone_index(idx)), raising=False)
    made = []
    monkeypatch.setattr(faiss, "index_gpu_to_cpu", lambda idx: made.append(1) or faiss.clone_index(idx.cpu), raising=False)
    x = _clustered(300, d=16)
    index, _ = build_index(x, use_gpu=True)
    assert gpu.cpu_twin(index) is None and "_etp_cpu" not in vars(index)  # the built GPU copy has no twin yet
    allowed = np.arange(300) % 3 == 0
    search(index, x[:2], 3, allowed)
    search(index, x[:2], 3, allowed)
    twin = gpu.cpu_twin(index)
    assert made == [1] and twin is not None and twin.ntotal == 300 and set(vars(index)) == {"cpu", "searches"}
    extra = x[:1] * -1.0
    update_index(index, extra, 300)
    assert twin.ntotal == index.ntotal == 301
    allowed = np.r_[np.zeros(300, bool), True]
    _, rows = search(index, extra, 1, allowed)  # the filtered search (on the twin) sees the added row
    assert rows[0, 0] == 300
    assert gpu.cpu_twin(faiss.clone_index(twin)) is None  # a CPU index has no twin
    n = len(gpu._TWINS)
    del index
    gc.collect()
    assert len(gpu._TWINS) == n - 1


def test_reader_during_a_write_never_writes_and_sees_every_row(tmp_path, caplog):
    """A query that opened the store before an ``index`` run appended, merged and saved indexes."""
    x = _clustered(50, d=8)
    path = tmp_path / "lk.h5"
    writer = EmbeddingStore.create(path, 8, {})
    for i in range(0, 32, 8):  # four level-0 parts
        writer.append([f"r{j}" for j in range(i, i + 8)], x[i:i + 8], x[i:i + 8], texts=[f"t{j}" for j in range(i, i + 8)])
    _, winfo = build_or_update(writer, "ecg")  # the writer saves an index of 32 rows
    assert winfo["n_rows"] == 32 and winfo["saved_to_disk"]
    reader = EmbeddingStore.open(path)
    assert len(reader) == 32 and not reader.holds_write_lock
    for i in range(32, 50, 2):  # eight more parts: the writer merges the reader's parts away
        writer.append([f"r{j}" for j in range(i, i + 2)], x[i:i + 2], x[i:i + 2], texts=[f"t{j}" for j in range(i, i + 2)])
    writer.compact()
    assert reader.writer_active()
    later = EmbeddingStore.open(path)  # a query opened now: the saved index covers 32 of its 50 rows
    view = SearchView.open(later, "ecg")
    assert (view.n, view.n_indexed) == (50, 32)
    _, rows = view.search(x[[5, 31, 40, 49]], 1)
    assert rows[:, 0].tolist() == [5, 31, 40, 49]  # 40 and 49 come from the exact tail search
    assert later.texts(rows[:, 0]) == ["t5", "t31", "t40", "t49"]
    _, winfo = build_or_update(writer, "ecg")  # the writer (still holding the lock) saves 50 rows
    assert winfo["n_rows"] == 50 and winfo["added_since_build"] == 18
    stamp = (tmp_path / "lk.h5.ecg.faiss").stat().st_mtime_ns
    view = SearchView.open(reader, "ecg")  # saved index ahead of the reader: it re-scans the store
    assert (view.n, view.n_indexed) == (50, 50) and len(reader) == 50
    _, rows = view.search(x[[5, 31, 49]], 1)
    assert rows[:, 0].tolist() == [5, 31, 49]
    assert reader.texts(rows[:, 0]) == ["t5", "t31", "t49"]  # its parts were merged away: re-scanned
    (tmp_path / "lk.h5.text.faiss").unlink(missing_ok=True)
    with caplog.at_level(logging.WARNING, logger="indexing.view"):
        tview = SearchView.open(reader, "text")  # no text index: exact search, one line, no file written
    assert tview.n_indexed == 0 and tview.note and "--rebuild-index" in caplog.text
    assert len([r for r in caplog.records if r.name == "indexing.view"]) == 1
    assert not (tmp_path / "lk.h5.text.faiss").exists()
    assert tview.search(x[[7]], 1)[1][0, 0] == 7
    assert (tmp_path / "lk.h5.ecg.faiss").stat().st_mtime_ns == stamp  # readers never write
    writer.close()
    reader.close()
    later.close()


def test_missing_faiss_names_the_extra_to_install():
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys; sys.modules['faiss'] = None\n"
            "try:\n    import indexing.faiss_index\nexcept Exception as e:\n    print(type(e).__name__, e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert out.stdout.startswith("IndexingError FAISS is not installed") and "etp-search[cpu]" in out.stdout


def test_filters_are_sized_to_the_rows_the_view_covers(tmp_path):
    """Issue 11.3: 'the row filter has 1029 entries but the index holds 1013 rows' while index appended."""
    from indexing.filters import filter_rows

    x = _clustered(120, d=8)
    store = EmbeddingStore.create(tmp_path / "f.h5", 8, {})
    store.append([f"r{i}" for i in range(100)], x[:100], x[:100], meta={"strat_fold": [i % 10 + 1 for i in range(100)]})
    build_or_update(store, "ecg")  # index saved for 100 rows
    store.append([f"r{i}" for i in range(100, 110)], x[100:110], x[100:110],
                 meta={"strat_fold": [i % 10 + 1 for i in range(100, 110)]})
    reader = EmbeddingStore.open(tmp_path / "f.h5")
    view = SearchView.open(reader, "ecg")
    assert (view.n, view.n_indexed) == (110, 100)
    store.append([f"r{i}" for i in range(110, 120)], x[110:], x[110:], meta={"strat_fold": [i % 10 + 1 for i in range(110, 120)]})
    reader.refresh()  # the store grew under the view: a filter now has 120 entries
    mask = filter_rows(reader, ["strat_fold=3"])
    assert mask.shape == (120,)
    _, rows = view.search(x[[102, 52]], 3, mask)
    allowed = np.flatnonzero(mask[:110])
    ref = _brute(x[[102, 52]], x[:110], 3, np.isin(np.arange(110), allowed))[1]
    assert np.array_equal(rows, ref) and (rows < 110).all()
    _, rows = view.search(x[[102]], 2, np.array([102, 115]))  # row ids past the view are ignored
    assert rows.tolist() == [[102]]
    store.close()
    reader.close()
