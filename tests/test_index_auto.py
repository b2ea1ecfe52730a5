"""`index --factory auto --max-index-memory`: indexing.ann's layout, streamed from the store, filtered search."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from etp_search.cli import _register, app
from indexing import ann
from indexing.faiss_index import search
from indexing.index_files import build_or_update, load_index, sidecar_path
from indexing.store import EmbeddingStore

_register()
cli = CliRunner()


def _clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = np.random.default_rng(5).normal(size=(30, dim))
    x = c[rng.integers(0, 30, n)] + 0.3 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_cli_auto_with_a_budget_builds_the_planned_index(tmp_path: Path, example_ptbxl: Path) -> None:
    store = tmp_path / "store.h5"
    res = cli.invoke(app, ["index", str(example_ptbxl), "--store", str(store), "--workers", "0",
                           "--max-index-memory", "1G", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout[res.stdout.index("{"):])
    assert summary["ecg_index"]["factory"] == "Flat" and summary["ecg_index"]["n_rows"] == 50
    side = json.loads(sidecar_path(Path(f"{store}.ecg.faiss")).read_text())
    assert side["layout"] == "flat" and side["max_index_memory"] == 2**30


@pytest.mark.parametrize("value, says", [("1K", "PQ codes need"), ("banana", "memory size")])
def test_cli_budget_mistakes_end_in_one_line(tmp_path: Path, example_ptbxl: Path, value: str, says: str) -> None:
    res = cli.invoke(app, ["index", str(example_ptbxl), "--store", str(tmp_path / "s.h5"), "--workers", "0",
                           "--max-index-memory", value])
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert says in res.output and "--max-index-memory" in res.output


def test_store_builder_streams_ivf_pq_refine_and_filters_still_work(tmp_path: Path) -> None:
    dim, n = 32, 12_000
    x = _clustered(n, dim)
    store = EmbeddingStore.create(tmp_path / "s.h5", dim, {"test": 1}, has_text=False)
    for a in range(0, n, 3000):
        store.append([f"r{i}" for i in range(a, a + 3000)], x[a:a + 3000])
    budget = n * dim * 2  # half the float vectors: Flat and IVF-Flat do not fit
    reads: list[int] = []
    vectors = store.vectors
    store.vectors = lambda which, rows=None: (reads.append(rows.stop - rows.start), vectors(which, rows))[1]  # type: ignore[method-assign]
    _, info = build_or_update(store, "ecg", builder=ann.store_builder(budget, chunk_rows=2000))
    store.vectors = vectors  # type: ignore[method-assign]
    assert info["layout"] == "ivf_pq_refine" and info["memory_estimate_bytes"] <= budget
    assert max(reads) <= 2000 and info["recall_at_10"] >= 0.75 and info["n_rows"] == n
    index, side = load_index(Path(f"{store.path}.ecg.faiss"), store.uuid, n, which="ecg")
    assert side["factory"].endswith("Refine(SQ8)")
    allowed = np.zeros(n, bool)
    allowed[::7] = True
    _, rows = search(index, x[:5], 10, allowed_rows=allowed)
    assert rows.shape == (5, 10) and bool(allowed[rows].all())
    store.close()
