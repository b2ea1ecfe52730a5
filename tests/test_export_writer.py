"""StoreWriter asks the store's id map which records are stored: the ids are read once per open."""

from __future__ import annotations

import numpy as np

from etp_search.export.source import Batch
from etp_search.export.writer import StoreWriter
from indexing.store import EmbeddingStore

DIM = 8
PROV = {"checkpoint_sha256": "x" * 64, "preset": "p", "text_source": "t", "embed_dim": DIM}


def _batch(ids):
    rng = np.random.default_rng(len(ids))
    x = rng.normal(size=(len(ids), DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    b = Batch(list(ids), np.zeros((len(ids), 12, 4), np.float32), [f"report {i}" for i in ids],
              [{"NORM": 100.0} for _ in ids], [{"age": 50.0} for _ in ids])
    return b, x, x[:, ::-1].copy()


def test_writer_reads_the_stored_ids_once_and_skips_them(tmp_path, monkeypatch):
    """Issue 13: the writer read every id into a set at open and the first append read them all
    again for the store's id map; now both ask the one map, built from one read."""
    path = tmp_path / "s.h5"
    w = StoreWriter(path, DIM, PROV)
    for a in range(0, 300, 100):
        assert w.write(*_batch([f"r{i}" for i in range(a, a + 100)])) == 100
    w.store.compact()
    w.close()

    id_rows_read = []
    real = EmbeddingStore._read

    def spy(self, name, rows, *a, **kw):
        if name == "ids" and isinstance(rows, slice):
            id_rows_read.append(len(range(*rows.indices(len(self)))))
        return real(self, name, rows, *a, **kw)

    monkeypatch.setattr(EmbeddingStore, "_read", spy)
    w = StoreWriter(path, DIM, PROV)
    assert "r5" in w.done_ids and "new0" not in w.done_ids and len(w.done_ids) == 300
    # a batch with stored ids, new ids and a repeat inside the batch: only the new ones, once each
    assert w.write(*_batch(["r1", "new0", "r299", "new1", "new0"])) == 2
    assert w.write(*_batch(["new1", "new2"])) == 1
    assert sum(id_rows_read) == 300  # every stored id read once, for the map; appends extend it
    assert w.done_ids.mask(["new2", "r0", "zz"]).tolist() == [True, True, False]
    w.close()
    with EmbeddingStore.open(path) as s:
        assert len(s) == 303 and s.ids_at([300, 301, 302]) == ["new0", "new1", "new2"]


def test_auto_index_is_built_on_a_gpu_and_explicit_factories_stream_from_the_store(tmp_path, monkeypatch):
    """One builder for every factory (issue 10): ``index --factory auto`` builds on a GPU when faiss
    sees one (the streamed auto builder never did), is saved from a CPU copy, and an explicit factory
    reads the store's vectors in chunks instead of all at once."""
    import faiss

    import indexing.gpu as gpu
    from indexing.index_files import load_index
    from tests.test_indexing import GpuFakeIndex

    moved: list[str] = []
    monkeypatch.setattr(gpu, "gpu_available", lambda: True)
    monkeypatch.setattr(gpu, "_gpu_resources", lambda: object())
    monkeypatch.setattr(faiss, "index_cpu_to_gpu",
                        lambda res, dev, idx: moved.append(type(idx).__name__) or GpuFakeIndex(faiss.clone_index(idx)),
                        raising=False)
    monkeypatch.setattr(faiss, "index_gpu_to_cpu", lambda idx: faiss.clone_index(idx.cpu), raising=False)
    path = tmp_path / "s.h5"
    w = StoreWriter(path, DIM, PROV)
    assert w.write(*_batch([f"r{i}" for i in range(300)])) == 300
    out = w.finish(use_gpu="auto")
    assert moved == ["IndexFlat", "IndexFlat"] and out["ecg_index"]["on_gpu"] and out["text_index"]["on_gpu"]
    loaded, info = load_index(f"{path}.ecg.faiss", w.store.uuid, 300, which="ecg")  # saved from the CPU copy
    assert loaded.ntotal == 300 and not info["on_gpu"] and info["factory_requested"] == "auto"

    reads: list[int] = []
    vectors = w.store.vectors
    monkeypatch.setattr(w.store, "vectors", lambda which, rows=None: (reads.append(rows.stop - rows.start), vectors(which, rows))[1])
    from indexing.build import store_builder

    w2 = w.finish(factory="IVF4,Flat", use_gpu=False, builder=store_builder(use_gpu=False, chunk_rows=64))
    assert w2["ecg_index"]["factory"] == "IVF4,Flat" and reads and max(reads) <= 64
    w.close()
