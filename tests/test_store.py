"""EmbeddingStore: round trips, validation, provenance, tiered merges and compaction."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from indexing.errors import ProvenanceMismatchError, RecordNotFoundError, StoreError
from indexing.segments import FANOUT as _FANOUT
from indexing.store import EmbeddingStore

DIM = 8
PROV = {"checkpoint_sha256": "a" * 64, "model_config": {"embed_dim": DIM, "ecg": {"name": "test_tiny"}},
        "preprocessing": {"name": "etp-100hz", "fs": 100}, "sampling_rate": 100, "package_version": "0.1.0"}


def _batch(start: int, n: int, seed: int = 0):
    rng = np.random.default_rng(seed + start)
    ids = [f"rec{start + i:05d}" for i in range(n)]
    return ids, rng.standard_normal((n, DIM)).astype(np.float32), rng.standard_normal((n, DIM)).astype(np.float32)


@pytest.fixture()
def store(tmp_path):
    s = EmbeddingStore.create(tmp_path / "store.h5", DIM, PROV, {"site": "str", "leads": "json"})
    yield s
    s.close()


def test_round_trip_across_parts_and_reopen(store):
    ids1, e1, t1 = _batch(0, 5)
    store.append(ids1, e1, t1, texts=[f"report {i}" for i in ids1], labels=[{"AFIB": 100.0}] * 5,
                 meta={"age": [60, 61, None, 63, 64], "sex": [0, 1, -1, 0, 1], "site": ["a"] * 5})
    ids2, e2, t2 = _batch(5, 3)
    # per-record dicts, as EcgRecord.meta carries them (extra keys such as "texts" are ignored)
    store.append(ids2, e2, t2, meta=[{"age": 50.0, "strat_fold": 10, "leads": ["I"], "texts": {}}] * 3)
    reopened = EmbeddingStore.open(store.path)
    assert len(reopened) == 8 and reopened.ids == ids1 + ids2
    assert np.array_equal(reopened.ecg(), np.vstack([e1, e2]))
    assert np.array_equal(reopened.text(), np.vstack([t1, t2]))
    # unsorted, repeated, negative rows and bool masks, across the part boundary
    rows = [6, 0, 6, -1, 4]
    assert np.array_equal(reopened.ecg(rows), np.vstack([e1, e2])[rows])
    mask = np.zeros(8, bool)
    mask[[1, 7]] = True
    assert np.array_equal(reopened.text(mask), np.vstack([t1, t2])[[1, 7]])
    assert reopened.texts(slice(0, 2)) == ["report rec00000", "report rec00001"]
    assert reopened.texts([7]) == [""]
    assert reopened.labels([0]) == [{"AFIB": 100.0}] and reopened.labels([6]) == [{}]
    assert json.loads(reopened.labels_json([1])[0]) == {"AFIB": 100.0}
    age = reopened.meta("age")
    assert age.dtype == np.float64 and np.isnan(age[2]) and age[5] == 50.0
    assert reopened.meta("sex").tolist() == [0, 1, -1, 0, 1, -1, -1, -1]
    assert reopened.meta("strat_fold", [5]).tolist() == [10]
    assert reopened.meta("site").tolist() == ["a"] * 5 + [""] * 3
    assert reopened.meta("leads", [0, 5]) == [None, ["I"]]
    assert reopened.row_of("rec00006") == 6 and reopened.ids_at([6, 0]) == ["rec00006", "rec00000"]
    assert reopened.rows_of(["rec00002", "rec00000"]).tolist() == [2, 0]
    assert reopened.contains(["rec00001", "nope"]).tolist() == [True, False]


def test_many_batches_merge_in_tiers_then_compact(store):
    all_e = []
    for b in range(_FANOUT * 2 + 3):
        ids, e, t = _batch(b * 4, 4)
        store.append(ids, e, t)
        all_e.append(e)
    expected = np.vstack(all_e)
    parts = sorted(p.name for p in store.parts_dir.iterdir())
    assert len(parts) == 2 + 3, parts  # two level-1 merges of _FANOUT batches + 3 fresh batches
    assert np.array_equal(EmbeddingStore.open(store.path).ecg(), expected)
    store.compact()
    assert list(store.parts_dir.iterdir()) == []
    store.close()  # hand the writer lock over
    again = EmbeddingStore.open(store.path)
    assert np.array_equal(again.ecg(), expected) and again.ids == [f"rec{i:05d}" for i in range(len(expected))]
    with h5py.File(store.path) as f:  # resizable, chunked datasets in the main file
        assert f["ecg"].maxshape == (None, DIM) and f["ecg"].chunks is not None
    ids, e, t = _batch(1000, 2)  # appending after compaction continues the sequence
    again.append(ids, e, t)
    assert len(EmbeddingStore.open(store.path)) == len(expected) + 2
    again.close()


def test_append_rejects_bad_batches(store):
    ids, e, t = _batch(0, 3)
    store.append(ids, e, t)
    with pytest.raises(StoreError, match="already stored"):
        store.append(ids[:1], e[:1], t[:1])
    with pytest.raises(StoreError, match="repeat"):
        store.append(["x", "x"], e[:2], t[:2])
    with pytest.raises(StoreError, match=r"expects \(2, 8\)"):
        store.append(["y", "z"], e[:2, :4], t[:2])
    bad = e[:1].copy()
    bad[0, 0] = np.nan
    with pytest.raises(StoreError, match="NaN"):
        store.append(["y"], bad, t[:1])
    with pytest.raises(StoreError, match="text="):
        store.append(["y"], e[:1])
    with pytest.raises(StoreError, match="unknown metadata column.*age, sex"):
        store.append(["y"], e[:1], t[:1], meta={"weight": [1.0]})
    assert len(store) == 3 and len(EmbeddingStore.open(store.path)) == 3


def test_missing_record_id(store):
    with pytest.raises(RecordNotFoundError, match="'nope' is not in store .*the store is empty; index a dataset"):
        store.row_of("nope")
    ids, e, t = _batch(0, 5)
    store.append(ids, e, t)
    with pytest.raises(RecordNotFoundError, match="'nope' is not in store") as err:
        store.row_of("nope")
    msg = str(err.value)
    assert isinstance(err.value, KeyError) and "\n" not in msg
    # `etp-search info` takes a dataset folder, not a store: the message shows real ids instead
    assert "etp-search" not in msg
    assert msg.endswith("(5 records); ids are the dataset's record ids, e.g. 'rec00000', 'rec00001', 'rec00002'")


def test_store_path_that_is_a_folder(tmp_path):
    for call in (lambda: EmbeddingStore.open(tmp_path), lambda: EmbeddingStore.create(tmp_path, DIM, PROV),
                 lambda: EmbeddingStore.create(tmp_path, DIM, PROV, overwrite=True)):
        with pytest.raises(StoreError) as err:
            call()
        assert str(err.value) == f"store path {tmp_path} is a folder; pass a file path such as {tmp_path}/store.h5"


def test_reader_rescans_when_the_writer_merges_its_parts_away(store):
    ids, e, t = _batch(0, 4 * 3)
    for i in range(0, 12, 3):
        store.append(ids[i:i + 3], e[i:i + 3], t[i:i + 3], texts=ids[i:i + 3])
    reader = EmbeddingStore.open(store.path)
    assert len(reader._segments) == 5  # main + the four parts it will try to read
    more, e2, t2 = _batch(12, _FANOUT * 2)
    for i in range(0, len(more), 2):  # merges: the reader's part files are deleted
        store.append(more[i:i + 2], e2[i:i + 2], t2[i:i + 2])
    assert not any(seg.path.exists() for seg in reader._segments[1:])
    np.testing.assert_array_equal(reader.ecg(), e)  # rows 0..11 as the reader saw them, re-scanned
    assert reader.texts([11, 0]) == [ids[11], ids[0]]
    store.compact()  # now the main file is replaced too
    np.testing.assert_array_equal(reader.ecg(np.array([3, 20])), np.concatenate([e, e2])[[3, 20]])
    assert len(reader) == 12 + len(more)  # the re-scan shows the writer's rows too (rows keep their numbers)
    reader.close()


def test_reader_gives_up_without_advising_a_rebuild_while_a_writer_is_busy(store, monkeypatch):
    import indexing.segments as st

    ids, e, t = _batch(0, 3)
    store.append(ids, e, t)  # the fixture's store object now holds the write lock
    reader = EmbeddingStore.open(store.path)
    monkeypatch.setattr(st, "READ_RETRIES", 2)

    def always_gone(*a, **k):
        raise st.Vanished("cannot read x: the file is gone")

    monkeypatch.setattr(reader, "_read_sel", always_gone)
    with pytest.raises(StoreError) as err:
        reader.ecg()
    assert "--rebuild" not in str(err.value) and "another process is writing it" in str(err.value)
    reader.close()


def test_missing_and_corrupt_store_give_one_line_fix(tmp_path):
    with pytest.raises(StoreError, match="etp-search index") as err:
        EmbeddingStore.open(tmp_path / "absent.h5")
    assert "\n" not in str(err.value)
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    with pytest.raises(StoreError, match="rebuild") as err:
        EmbeddingStore.open(garbage)
    assert "\n" not in str(err.value)
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(StoreError, match="not an etp-search embedding store") as err:
        EmbeddingStore.open(tmp_path / "other.h5")
    assert "--rebuild" not in str(err.value)  # --rebuild would overwrite someone else's HDF5 file


def test_create_refuses_to_clobber(store):
    with pytest.raises(StoreError, match="already exists"):
        EmbeddingStore.create(store.path, DIM, PROV)
    ids, e, t = _batch(0, 2)
    store.append(ids, e, t)
    store.close()
    fresh = EmbeddingStore.create(store.path, 4, {}, overwrite=True, has_text=False)
    assert len(fresh) == 0 and fresh.dim == 4 and fresh.uuid != store.uuid and not fresh.has_text
    with pytest.raises(StoreError, match="no report vectors"):
        fresh.text()


def test_provenance_round_trip_and_mismatch_named(store):
    again = EmbeddingStore.open(store.path)
    assert again.provenance["checkpoint_sha256"] == "a" * 64 and "created" in again.provenance
    again.check_provenance(dict(PROV, sampling_rate=100.0))  # 100 == 100.0; JSON key order ignored
    again.check_provenance({"preprocessing": json.dumps({"fs": 100, "name": "etp-100hz"}), "model_config": None})
    with pytest.raises(ProvenanceMismatchError) as err:
        again.check_provenance(dict(PROV, checkpoint_sha256="b" * 64, preprocessing={"name": "etp-500hz", "fs": 500}))
    assert err.value.fields == ["checkpoint_sha256", "preprocessing"]
    msg = str(err.value)
    assert "checkpoint_sha256 (store: aaaaaaaaaaaa…, now: bbbbbbbbbbbb…)" in msg and "--rebuild" in msg
    assert "into a new store with `etp-search index DATA_DIR --store NEW.h5`" in msg  # a way that keeps this one
    assert "\n" not in msg


def test_single_writer_lock(store):
    ids, e, t = _batch(0, 2)
    store.append(ids, e, t)  # takes the lock
    other = EmbeddingStore.open(store.path)
    with pytest.raises(StoreError, match="another process is writing"):
        other.append(["z"], e[:1], t[:1])
    store.close()
    other.append(["z"], e[:1], t[:1])
    other.close()
    assert EmbeddingStore.open(store.path).ids == ids + ["z"]


def test_exception_mid_append_leaves_store_unchanged(store, monkeypatch):
    import indexing._crash as st

    ids, e, t = _batch(0, 4)
    store.append(ids[:2], e[:2], t[:2])

    def boom(point: str) -> None:
        if point == "mid-write":
            raise RuntimeError("disk full")

    monkeypatch.setattr(st, "hook", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        store.append(ids[2:], e[2:], t[2:])
    monkeypatch.setattr(st, "hook", None)
    assert len(store) == 2 and len(EmbeddingStore.open(store.path)) == 2
    assert not [p for p in store.parts_dir.iterdir() if p.name.startswith(".tmp-")]
    store.append(ids[2:], e[2:], t[2:])  # the retry succeeds: no duplicates, no gap
    assert np.array_equal(EmbeddingStore.open(store.path).ecg(), e)


def _unit(n: int, d: int = 8, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_flipped_vector_bytes_are_named_not_used(tmp_path):
    """Issue 11.5: damaged vector data (norms of thousands) fed retrieval silently."""
    import h5py

    from indexing.errors import StoreError

    path = tmp_path / "n.h5"
    with EmbeddingStore.create(path, 8, {}, unit_norm=True) as s:
        s.append([f"r{i}" for i in range(20)], _unit(20), _unit(20, seed=1))
        with pytest.raises(StoreError, match="must be L2-normalised"):
            s.append(["bad"], 3 * _unit(1), _unit(1))
        s.compact()
    with h5py.File(path, "r") as f:
        assert f["ecg"].fletcher32 and f["text"].fletcher32  # new stores checksum their chunks
    # A damaged value that passes the checksum (rewritten through HDF5): the norm check names it.
    with h5py.File(path, "r+") as f:
        f["text"][7] = f["text"][7] * 9000.0
    with EmbeddingStore.open(path) as s:
        assert s.ecg().shape == (20, 8)
        with pytest.raises(StoreError, match=r"damaged text vectors in 1 row\(s\): 7 \('r7', norm 9000\)") as e:
            s.text()
        assert "--rebuild" in str(e.value) and "\n" not in str(e.value)
        assert s.text(np.arange(5)).shape == (5, 8)  # rows not damaged still read


def test_flipped_bytes_inside_a_chunk_fail_the_checksum_with_one_line(tmp_path):
    """Issue 11.6: damaged internals gave raw OSError / UnicodeDecodeError."""
    import h5py

    from indexing.errors import StoreError

    path = tmp_path / "c.h5"
    with EmbeddingStore.create(path, 64, {}, unit_norm=True) as s:
        s.append([f"r{i}" for i in range(200)], _unit(200, 64), _unit(200, 64, seed=1),
                 texts=[f"report {i}" for i in range(200)])
        s.compact()
    with h5py.File(path, "r") as f:
        offset = f["ecg"].id.get_offset() if f["ecg"].chunks is None else f["ecg"].id.get_chunk_info(0).byte_offset
    data = bytearray(path.read_bytes())
    for i in range(offset + 100, offset + 140):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    with EmbeddingStore.open(path) as s:
        with pytest.raises(StoreError, match=r"store .*c.h5 is damaged \(reading ecg: .*\); rebuild it") as e:
            s.ecg()
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("seed", range(12))
def test_fuzzed_store_bytes_give_one_line_or_correct_reads(tmp_path, seed):
    """Seeded, bounded fuzz: flip bytes anywhere in a store; every read is correct or a StoreError."""
    from indexing.errors import StoreError

    path = tmp_path / "f.h5"
    x, t = _unit(300, 16), _unit(300, 16, seed=1)
    with EmbeddingStore.create(path, 16, {"checkpoint_sha256": "c"}, unit_norm=True) as s:
        s.append([f"r{i}" for i in range(300)], x, t, texts=[f"report {i}" for i in range(300)],
                 meta={"age": np.arange(300) / 3.0})
        s.compact()
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(seed)
    for i in rng.choice(len(data), size=int(rng.integers(1, 64)), replace=False):
        data[i] ^= int(rng.integers(1, 256))
    path.write_bytes(bytes(data))
    try:
        with EmbeddingStore.open(path) as s:
            ids, ecg, text, texts, age = s.ids, s.ecg(), s.text(), s.texts(), s.meta("age")
    except StoreError as e:
        assert "\n" not in str(e) and ("rebuild" in str(e) or "not an etp-search" in str(e)), str(e)
        return
    assert ids == [f"r{i}" for i in range(300)]  # what was read is what was written
    np.testing.assert_array_equal(ecg, x)
    np.testing.assert_array_equal(text, t)
    np.testing.assert_array_equal(age, np.arange(300) / 3.0)
    assert texts == [f"report {i}" for i in range(300)]


def test_open_reads_no_ids_and_the_id_map_is_built_once_then_extended(tmp_path):
    """Issue 13: opening a 5M-row store read and mapped every id (18 s); now a query reads only its
    hits' ids and the first lookup by id builds the map, which later appends extend."""
    path = tmp_path / "ids.h5"
    rng = np.random.default_rng(0)

    def unit(n):
        x = rng.normal(size=(n, 8)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    w = EmbeddingStore.create(path, 8, {}, has_text=False)
    w.append([f"r{i}" for i in range(20)], unit(20))
    w.compact()
    for a in (20, 30):  # two parts after the main file
        w.append([f"r{i}" for i in range(a, a + 10)], unit(10))
    reader = EmbeddingStore.open(path)
    read_rows = []
    real = reader._read_raw_ids
    reader._read_raw_ids = lambda a, b: (read_rows.append(b - a), real(a, b))[1]
    assert reader._row is None and len(reader) == 40  # nothing read at open
    assert reader.ids_at([39, 0, 25, 25]) == ["r39", "r0", "r25", "r25"] and read_rows == []
    assert reader.row_of("r33") == 33 and reader.rows_of(["r1", "r21"]).tolist() == [1, 21]
    assert read_rows == [40]  # one chunked pass for the map, then lookups only
    w.append([f"n{i}" for i in range(5)], unit(5))
    reader.refresh()
    assert reader.row_of("n4") == 44 and reader.contains(["n0", "r0", "zz"]).tolist() == [True, True, False]
    assert read_rows == [40, 5]  # extended by the new rows, not rebuilt
    with pytest.raises(RecordNotFoundError, match="e.g. 'r0', 'r1', 'r2'"):
        reader.row_of("missing")
    assert reader.ids[:3] == ["r0", "r1", "r2"] and len(reader.ids) == 45
    reader.close()
    w.close()


def test_damage_in_a_part_file_names_the_part(store):
    """Flipped bytes in one part made every verb say only 'store s.h5 is damaged' (user trial)."""
    import os

    for start in (0, 5):
        store.append(*_batch(start, 5))
    parts = sorted(store.path.parent.glob("store.h5.parts/*.h5"))
    assert len(parts) == 2, parts
    victim = parts[1]  # rows 5..9
    with h5py.File(victim, "r") as f:
        info = f["ecg"].id.get_chunk_info(0)
    raw = bytearray(victim.read_bytes())
    raw[info.byte_offset + 4:info.byte_offset + 12] = bytes(8 - i for i in range(8))
    victim.write_bytes(bytes(raw))
    again = EmbeddingStore.open(store.path)
    try:
        assert again.ecg([0, 1]).shape == (2, DIM)  # the undamaged part still reads
        with pytest.raises(StoreError) as exc:
            again.ecg([7])
        msg = str(exc.value)
        assert os.path.relpath(victim, store.path.parent) in msg and "reading ecg" in msg and "\n" not in msg
    finally:
        again.close()
