"""A reader (query) running while another process (``index``) appends, merges, compacts and saves indexes.

Readers never take the store's lock; they must see whole batches in row order, re-scan when the
writer merges or compacts files away, and never rewrite index files while the writer holds the lock.
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

from indexing.faiss_index import open_or_build, search
from indexing.store import EmbeddingStore

faiss.omp_set_num_threads(1)

WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    import indexing.store as st
    from indexing.faiss_index import open_or_build
    path, n = sys.argv[1], int(sys.argv[2])
    store = st.EmbeddingStore.open(path)
    for i in range(8, n):  # one row per batch: a merge every 8 appends, compaction every 24
        v = np.random.default_rng(i).standard_normal(8).astype(np.float32)
        store.append([f"r{i:04d}"], v[None], v[None], texts=[f"t{i}"])
        if i % 24 == 0:
            store.compact()
            open_or_build(store, "ecg")
    store.compact()
    open_or_build(store, "ecg")
    store.close()
""")


def _vec(i: int) -> np.ndarray:
    return np.random.default_rng(i).standard_normal(8).astype(np.float32)


def test_queries_while_another_process_indexes(tmp_path):
    path = tmp_path / "lk.h5"
    with EmbeddingStore.create(path, 8, {}) as s:
        s.append([f"r{i:04d}" for i in range(8)], np.stack([_vec(i) for i in range(8)]),
                 np.stack([_vec(i) for i in range(8)]), texts=[f"t{i}" for i in range(8)])
        open_or_build(s, "ecg")
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
                index, _ = open_or_build(reader, "ecg")
                assert index.ntotal == n
                rows = np.arange(n)
                assert reader.ids_at(rows) == [f"r{i:04d}" for i in range(n)]
                np.testing.assert_array_equal(reader.ecg(rows), np.stack([_vec(i) for i in range(n)]))
                q = n - 1
                _, hit = search(index, _vec(q)[None], 1)
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
