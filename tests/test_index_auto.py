"""`index --factory auto --max-index-memory`: indexing.plan's layout, streamed from the store, filtered search."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from etp_search.cli import _register, app
from indexing.build import store_builder
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
    _, info = build_or_update(store, "ecg", builder=store_builder(max_memory=budget, chunk_rows=2000))
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


def test_ondisk_lists_sit_beside_the_index_under_its_digest_and_a_flipped_byte_is_named(tmp_path: Path) -> None:
    from indexing.errors import IndexStaleError

    dim, n = 32, 12_000
    x = _clustered(n, dim, seed=1)
    store = EmbeddingStore.create(tmp_path / "s.h5", dim, {"test": 1}, has_text=False)
    store.append([f"r{i}" for i in range(n)], x)
    budget = n * dim * 2
    path = Path(f"{store.path}.ecg.faiss")
    lists = Path(f"{path}.ivfdata")
    _, info = build_or_update(store, "ecg", builder=store_builder(max_memory=budget, ondisk=True, chunk_rows=3000), ondisk=True)
    assert info["ondisk"] is True and info["layout"] == "ivf_flat"  # lists on disk: IVF-Flat fits the budget
    assert info["ivfdata"]["file"] == lists.name and info["ivfdata"]["bytes"] == lists.stat().st_size > 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no build leftovers
    index, side = load_index(path, store.uuid, n, which="ecg")
    assert side["ivfdata"]["sha256"] == info["ivfdata"]["sha256"]
    _, rows = index.search(x[:20], 10)
    assert (rows[:, 0] == np.arange(20)).mean() >= 0.9  # each row finds itself through the mapped lists
    del index

    raw = bytearray(lists.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    lists.write_bytes(bytes(raw))
    with pytest.raises(IndexStaleError) as exc:
        load_index(path, store.uuid, n, which="ecg")
    said = str(exc.value)
    assert "\n" not in said and str(lists) in said and "SHA-256" in said and "--rebuild-index" in said

    # The writer rebuilds a damaged one; appended rows rebuild on-disk lists instead of writing them in place.
    _, again = build_or_update(store, "ecg", builder=store_builder(max_memory=budget, ondisk=True, chunk_rows=3000), ondisk=True)
    # The build is deterministic, so the rebuilt lists equal the undamaged ones (and "saved" may fall in
    # the same second): what shows the rebuild is that the flipped byte is gone and the digest holds.
    assert lists.read_bytes() != bytes(raw)
    assert hashlib.sha256(lists.read_bytes()).hexdigest() == again["ivfdata"]["sha256"] == info["ivfdata"]["sha256"]
    load_index(path, store.uuid, n, which="ecg")
    more = _clustered(3000, dim, seed=2)
    store.append([f"m{i}" for i in range(3000)], more)
    _, grown = build_or_update(store, "ecg", builder=store_builder(max_memory=budget, ondisk=True, chunk_rows=3000), ondisk=True)
    assert grown["n_rows"] == grown["n_rows_at_build"] == n + 3000 and grown["added_since_build"] == 0
    # Asked for in-memory lists again: rebuilt, and the lists file goes.
    _, mem = build_or_update(store, "ecg", builder=store_builder(max_memory=budget, chunk_rows=3000), ondisk=False)
    assert "ivfdata" not in mem and not lists.exists()
    load_index(path, store.uuid, n + 3000, which="ecg")
    store.close()


def test_cli_ondisk_lists_need_factory_auto(tmp_path: Path, example_ptbxl: Path) -> None:
    res = cli.invoke(app, ["index", str(example_ptbxl), "--store", str(tmp_path / "s.h5"), "--workers", "0",
                           "--ondisk-lists", "--factory", "Flat"])
    assert res.exit_code != 0 and "Traceback" not in res.output and "--ondisk-lists" in res.output
    assert not (tmp_path / "s.h5").exists()


def test_an_ondisk_build_removes_the_lists_file_a_killed_build_left(tmp_path: Path) -> None:
    import subprocess
    import sys

    dim, n = 16, 12_000
    store = EmbeddingStore.create(tmp_path / "s.h5", dim, {"test": 1}, has_text=False)
    store.append([f"r{i}" for i in range(n)], _clustered(n, dim, seed=3))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead = tmp_path / f".s.h5.ecg.{gone.stdout.strip()}.build.faiss.ivfdata"  # a build killed with -9
    live = tmp_path / f".s.h5.ecg.{os.getppid()}.build.faiss.ivfdata"  # a process still running
    other = tmp_path / f".s.h5.text.{gone.stdout.strip()}.build.faiss.ivfdata"  # the other index's
    for p in (dead, live, other):
        p.write_bytes(b"\0" * 4096)
    build_or_update(store, "ecg", builder=store_builder(max_memory=n * dim * 2, ondisk=True, chunk_rows=3000), ondisk=True)
    assert not dead.exists() and live.exists() and other.exists()
    assert Path(f"{store.path}.ecg.faiss.ivfdata").exists()
    store.close()
