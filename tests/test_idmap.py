"""indexing.idmap: the store's id -> row map in numpy arrays, against a plain dict."""

from __future__ import annotations

import numpy as np

from indexing import idmap
from indexing.idmap import IdMap, hash_key, hash_keys


def _ids(rng, n):
    # widths 0..30, ASCII and UTF-8, unique
    out = {bytes(rng.integers(1, 256, int(rng.integers(0, 31))).astype(np.uint8)) for _ in range(n)}
    return sorted(out, key=lambda _: rng.random())


def test_hash_is_width_independent_and_python_matches_numpy():
    rng = np.random.default_rng(0)
    ids = _ids(rng, 500)
    h = hash_keys(np.array(ids, dtype="S"))
    assert [int(v) for v in h] == [hash_key(k) for k in ids]
    assert hash_keys(np.array([b"ab"], "S2"))[0] == hash_keys(np.array([b"ab"], "S40"))[0]
    assert len(set(h.tolist())) == len(ids)


def test_map_equals_a_dict_across_bulk_adds_small_appends_and_folds(monkeypatch):
    monkeypatch.setattr(idmap, "FOLD_MIN", 64)  # fold often
    rng = np.random.default_rng(1)
    ids = _ids(rng, 3000)
    m, ref = IdMap(), {}
    pos = 0
    for size in (700, 5, 1, 63, 200, 64, 30, 1000):  # bulk (>= FOLD_MIN) and small, widths growing
        chunk = ids[pos:pos + size]
        if size >= 100:
            m.add_chunks([chunk[:size // 2], chunk[size // 2:]])
        else:
            m.add(chunk)
        ref.update({k: pos + j for j, k in enumerate(chunk)})
        pos += size
        assert len(m) == pos
        probe = ids[:pos + 20] + [b"\xff" * 40, b"never"]
        assert m.lookup(probe).tolist() == [ref.get(k, -1) for k in probe]
        assert [m.lookup_one(k) for k in probe[::7]] == [ref.get(k, -1) for k in probe[::7]]
    assert m.keys_in_row_order().tolist() == ids[:pos]


def test_colliding_hashes_still_give_the_right_rows(monkeypatch):
    """Every id hashing the same: lookups confirm the key, so they walk the run and stay exact."""
    monkeypatch.setattr(idmap, "hash_keys", lambda keys: np.zeros(len(keys), np.uint64))
    monkeypatch.setattr(idmap, "hash_key", lambda key: 0)
    monkeypatch.setattr(idmap, "FOLD_MIN", 16)  # into the arrays, not the small dict
    ids = [f"id{i}".encode() for i in range(200)]
    m = IdMap()
    m.add_chunks([ids[:150]])
    m.add_chunks([ids[150:]])
    assert len(m._tail) == 0 and len(m.hashes) == 200
    assert m.lookup(ids[::-1] + [b"id200"]).tolist() == list(range(199, -1, -1)) + [-1]
    assert m.lookup_one(b"id77") == 77 and m.lookup_one(b"x") == -1
