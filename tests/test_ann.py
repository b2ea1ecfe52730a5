"""indexing.plan / build / recall: layout choice by rows and budget, streamed builds, refine, on-disk lists, recall."""

from __future__ import annotations

import shutil
from pathlib import Path

import faiss
import h5py
import numpy as np
import pytest

from indexing.build import build_index
from indexing.faiss_index import read_index_file, set_search_params
from indexing.plan import PlanError, plan_index
from indexing.recall import exact_knn, recall_at_k, tune_nprobe
from indexing.errors import IndexStaleError

DIM = 32


def _clustered(n: int, seed: int = 0, centres: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = np.random.default_rng(99).normal(size=(centres, DIM))
    x = c[rng.integers(0, centres, n)] + 0.35 * rng.normal(size=(n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    path = tmp_path_factory.mktemp("ann") / "x.h5"
    x = _clustered(12_000)
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=x, chunks=(500, DIM))
    q = _clustered(200, seed=1)
    return path, x, q


class CountingDataset:
    """An h5py dataset that records how many rows each read asked for."""

    def __init__(self, ds: h5py.Dataset) -> None:
        self.ds, self.shape, self.reads = ds, ds.shape, []

    def __getitem__(self, key):
        out = self.ds[key]
        self.reads.append(len(out))
        return out


def test_auto_picks_by_rows_and_the_budget_decides_when_floats_no_longer_fit() -> None:
    assert plan_index(150_000, 256).kind == "flat"
    assert plan_index(1_000_000, 256).kind == "ivf_flat"
    big = plan_index(5_000_000, 256)
    assert big.kind == "ivf_pq_refine" and big.factory == "IVF4096,PQ32,Refine(SQ8)"
    small_budget = plan_index(150_000, 256, max_memory=64 * 2**20)
    assert small_budget.kind == "ivf_pq_refine" and small_budget.memory_bytes <= 64 * 2**20
    assert plan_index(150_000, 256, max_memory=200 * 2**20).kind == "flat"
    with pytest.raises(PlanError, match="max-index-memory"):
        plan_index(5_000_000, 256, max_memory=100 * 2**20)
    with pytest.raises(PlanError, match="over the budget"):
        plan_index(1_000_000, 256, "flat", max_memory=512 * 2**20)
    # With the lists on disk only centroids and refine codes stay in RAM.
    assert plan_index(5_000_000, 256, max_memory=1400 * 2**20, ondisk=True).kind == "ivf_pq_refine"


def test_build_streams_chunks_and_never_reads_more_rows_at_once(data) -> None:
    path, x, q = data
    with h5py.File(path, "r") as f:
        src = CountingDataset(f["x"])
        plan = plan_index(len(x), DIM, "ivf_flat")
        index, rep = build_index(src, plan, chunk_rows=1000, train_size=3000)
    assert max(src.reads) <= 1000 and sum(src.reads) >= len(x) and rep["chunks"] == 12
    assert index.ntotal == len(x) and rep["train_size"] == 3000
    set_search_params(index, nprobe=plan.nlist)
    _, ids = index.search(x[[5, 777, 11_999]], 1)
    assert ids[:, 0].tolist() == [5, 777, 11_999]  # FAISS id = row of the source


def test_exact_knn_streamed_equals_flat_search(data) -> None:
    _, x, q = data
    flat = faiss.IndexFlatIP(DIM)
    flat.add(x)
    d_ref, i_ref = flat.search(q, 10)
    d, i = exact_knn(x, q, 10, chunk_rows=777)
    np.testing.assert_allclose(d, d_ref, rtol=1e-5, atol=1e-5)
    assert recall_at_k(i, i_ref, 10) == 1.0


def test_refine_reaches_a_recall_plain_ivf_pq_misses(data) -> None:
    _, x, q = data
    _, truth = exact_knn(x, q, 10)
    plan = plan_index(len(x), DIM, "ivf_pq_refine", pq_m=4)  # 4 bytes a vector: coarse on purpose
    index, _ = build_index(x, plan, chunk_rows=2500)
    assert isinstance(index, faiss.IndexRefine)
    set_search_params(index, nprobe=plan.nlist, k_factor=16)
    refined = recall_at_k(index.search(q, 10)[1], truth)
    base = faiss.downcast_index(index.base_index)
    base.nprobe = plan.nlist
    plain = recall_at_k(base.search(q, 10)[1], truth)
    assert refined >= 0.85 > 0.5 > plain  # measured 0.88 vs 0.21 (SQ8 caps the refine on this noisy data)


def test_ondisk_lists_give_the_in_memory_results_and_survive_a_move(data, tmp_path: Path) -> None:
    path, x, q = data
    results = {}
    for kind in ("ivf_flat", "ivf_pq_refine"):
        for ondisk in (False, True):
            plan = plan_index(len(x), DIM, kind, ondisk=ondisk)
            out = tmp_path / f"{kind}-{ondisk}" / "ecg.index"
            with h5py.File(path, "r") as f:
                build_index(f["x"], plan, chunk_rows=3000, out=out)
            if ondisk:
                ivfdata = Path(str(out) + ".ivfdata")
                code = DIM * 4 if kind == "ivf_flat" else plan.pq_m
                assert ivfdata.stat().st_size >= len(x) * (code + 8)  # every list entry lives in .ivfdata
                moved = tmp_path / f"moved-{kind}"
                shutil.copytree(out.parent, moved)
                shutil.rmtree(out.parent)
                out = moved / "ecg.index"
            index = read_index_file(out)
            set_search_params(index, nprobe=8, k_factor=8)
            results[kind, ondisk] = index.search(q, 10)
        (d0, i0), (d1, i1) = results[kind, False], results[kind, True]
        assert np.array_equal(i0, i1)
        np.testing.assert_allclose(d0, d1, rtol=1e-6)


def test_tune_nprobe_takes_the_smallest_reaching_the_target(data) -> None:
    _, x, q = data
    _, truth = exact_knn(x, q, 10)
    plan = plan_index(len(x), DIM, "ivf_flat")
    index, _ = build_index(x, plan)
    nprobe, recall = tune_nprobe(index, q, truth, target=0.9)
    assert recall >= 0.9 and faiss.extract_index_ivf(index).nprobe == nprobe
    if nprobe > 1:
        set_search_params(index, nprobe=nprobe // 2)
        assert recall_at_k(index.search(q, 10)[1], truth) < 0.9


def test_a_damaged_index_file_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "ecg.index"
    bad.write_bytes(b"not an index")
    with pytest.raises(IndexStaleError, match=r"ecg.index is damaged.*--rebuild-index"):
        read_index_file(bad)


def test_plan_and_data_of_different_shapes_are_refused(data) -> None:
    _, x, _ = data
    with pytest.raises(PlanError, match="plan again"):
        build_index(x[:100], plan_index(len(x), DIM))


def test_recall_counts_rows_tied_with_a_true_neighbour() -> None:
    truth, truth_scores = np.array([[0, 1]]), np.array([[0.9, 0.8]], np.float32)
    found, found_scores = np.array([[0, 5]]), np.array([[0.9, 0.8]], np.float32)  # row 5: row 1's twin
    assert recall_at_k(found, truth, 2) == 0.5
    assert recall_at_k(found, truth, 2, found_scores=found_scores, truth_scores=truth_scores) == 1.0
    worse = np.array([[0.9, 0.7]], np.float32)  # row 5 really is farther: still a miss
    assert recall_at_k(found, truth, 2, found_scores=worse, truth_scores=truth_scores) == 0.5


def test_an_index_over_duplicated_vectors_is_not_underrated() -> None:
    """Report vectors repeat (PTB-XL: 1,646 records, 563 distinct reports). Counting ids alone, an
    IVF index over them measured recall@10 0.46 at nprobe 16 of 32 on the real store, since any 10
    of a report's copies are equally right; by exact score it is 0.97 at nprobe 4."""
    unique = _clustered(60, seed=3)
    x = np.repeat(unique, 40, axis=0)  # every vector stored 40 times
    index, info = build_index(x, "IVF16,Flat", use_gpu=False, recall_queries=200)
    assert info["recall_at_10"] >= 0.95 and info["nprobe"] < 16
    _, ids = index.search(x[:5], 11)
    by_id = recall_at_k(ids[:, 1:], exact_knn(x, x[:5], 11)[1][:, 1:], 10)
    assert by_id < 0.9  # the same results, counted by id: the ties look like misses
