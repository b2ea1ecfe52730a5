"""A reader (query) running while another process (``index``) appends, merges, compacts and saves indexes.

Readers never take the store's lock and never write index files; they must see whole batches in row
order, re-scan when the writer merges or compacts files away, and search the rows the saved index
does not cover yet exactly.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import faiss
import numpy as np

from indexing.index_files import build_or_update
from indexing.store import EmbeddingStore
from indexing.view import SearchView

faiss.omp_set_num_threads(1)

WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    import indexing.store as st
    from indexing.index_files import build_or_update
    path, n = sys.argv[1], int(sys.argv[2])
    store = st.EmbeddingStore.open(path)
    for i in range(8, n):  # one row per batch: a merge every 8 appends, compaction every 24
        v = np.random.default_rng(i).standard_normal(8).astype(np.float32)
        store.append([f"r{i:04d}"], v[None], v[None], texts=[f"t{i}"])
        if i % 24 == 0:
            store.compact()
            build_or_update(store, "ecg")
    store.compact()
    build_or_update(store, "ecg")
    store.close()
""")


def _vec(i: int) -> np.ndarray:
    return np.random.default_rng(i).standard_normal(8).astype(np.float32)


def test_queries_while_another_process_indexes(tmp_path):
    path = tmp_path / "lk.h5"
    with EmbeddingStore.create(path, 8, {}) as s:
        s.append([f"r{i:04d}" for i in range(8)], np.stack([_vec(i) for i in range(8)]),
                 np.stack([_vec(i) for i in range(8)]), texts=[f"t{i}" for i in range(8)])
        build_or_update(s, "ecg")
    n_total = 200
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(n_total)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    checks = 0
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            done = proc.poll() is not None
            with EmbeddingStore.open(path) as reader:  # a fresh query, like `etp-search query`
                n = len(reader)
                time.sleep(0.002)  # let the writer move files between the scan and the reads
                view = SearchView.open(reader, "ecg")  # read-only: saved index + exact tail
                assert view.n == len(reader) >= n
                n = view.n
                rows = np.arange(n)
                assert reader.ids_at(rows) == [f"r{i:04d}" for i in range(n)]
                np.testing.assert_array_equal(reader.ecg(rows), np.stack([_vec(i) for i in range(n)]))
                q = n - 1
                _, hit = view.search(_vec(q)[None], 1)
                assert hit[0, 0] == q and reader.texts(hit[0]) == [f"t{q}"]
            checks += 1
            if done:
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-2000:]
    assert checks > 3
    with EmbeddingStore.open(path) as s:
        assert len(s) == n_total


def test_append_checks_already_stored_ids_under_the_lock(tmp_path):
    """Two writers that opened the store before either appended: the second must see the first's rows."""
    path = tmp_path / "two.h5"
    EmbeddingStore.create(path, 8, {}).close()
    a, b = EmbeddingStore.open(path), EmbeddingStore.open(path)
    a.append(["r0", "r1"], np.stack([_vec(0), _vec(1)]), np.stack([_vec(0), _vec(1)]))
    a.close()
    import pytest

    from indexing.errors import StoreError

    with pytest.raises(StoreError, match="already stored"):
        b.append(["r1", "r2"], np.stack([_vec(1), _vec(2)]), np.stack([_vec(1), _vec(2)]))
    b.close()
    with EmbeddingStore.open(path) as s:
        assert s.ids == ["r0", "r1"]


RUN = textwrap.dedent("""
    import sys, time
    import numpy as np
    from indexing.errors import StoreError
    from indexing.store import EmbeddingStore
    path, first, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    store = EmbeddingStore.open(path)
    try:
        store.begin_write()  # what `etp-search index` does before it reads the ids already stored
    except StoreError as e:
        print(e, file=sys.stderr)
        sys.exit(1)
    done = set(store.ids)
    todo = [f"r{i:04d}" for i in range(first, first + n) if f"r{i:04d}" not in done]
    for s in range(0, len(todo), 5):
        ids = todo[s:s + 5]
        v = np.stack([np.random.default_rng(int(i[1:])).standard_normal(8).astype(np.float32) for i in ids])
        store.append(ids, v, v)
        time.sleep(0.01)
    store.compact()
    store.close()
""")


def test_two_index_runs_at_many_start_offsets_never_duplicate(tmp_path):
    """Issue 11.1: two writers started close together both exited 0 and left duplicate rows."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), OMP_NUM_THREADS="1")
    offsets = np.linspace(0.0, 0.3, 10)
    outcomes = []
    for j, offset in enumerate(offsets):
        path = tmp_path / f"s{j}.h5"
        with EmbeddingStore.create(path, 8, {}) as s:
            s.append(["r0000"], _vec(0)[None], _vec(0)[None])
        first = subprocess.Popen([sys.executable, "-c", RUN, str(path), "0", "50"], env=env,
                                 stderr=subprocess.PIPE, text=True)
        time.sleep(offset)
        second = subprocess.Popen([sys.executable, "-c", RUN, str(path), "45", "10"], env=env,
                                  stderr=subprocess.PIPE, text=True)
        errs = [p.communicate(timeout=120)[1] for p in (first, second)]
        codes = [first.returncode, second.returncode]
        for code, err in zip(codes, errs):
            assert code == 0 or (code == 1 and err.strip().count("\n") == 0
                                 and "another process is writing" in err), err[-1500:]
        with EmbeddingStore.open(path) as s:
            ids = s.ids
        assert len(ids) == len(set(ids)), f"offset {offset:.2f}s: {len(ids)} rows, {len(set(ids))} unique"
        expect = {f"r{i:04d}" for i in range(50)} | ({f"r{i:04d}" for i in range(45, 55)} if codes[1] == 0 else set())
        if codes[0] == 0:
            assert set(ids) == expect
        outcomes.append(tuple(codes))
    assert outcomes  # every offset checked; which run won the lock varies with timing
