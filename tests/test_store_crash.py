"""Crash-and-resume: kill an embedding run anywhere, rerun it, get the uninterrupted store back.

Modelled on faiss contrib/big_batch_search.py (``crash_at``): a child process writes the store and
dies (os._exit, no cleanup) at a chosen write step, or is SIGKILLed at a random moment; the rerun
skips stored ids with ``contains`` and must produce the same ids order and bit-identical data.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from indexing.segments import FANOUT as _FANOUT
from indexing.store import EmbeddingStore

N_RECORDS, BATCH = 60, 3  # 20 batches: crosses a tier merge (every _FANOUT batches)

DRIVER = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    import indexing.store as st
    import indexing._crash as _crash
    path, n, batch, crash, pause = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
    if crash != "none":
        point, nth = crash.split(":")
        hits = {"n": 0}
        def hook(p):
            if p == point:
                hits["n"] += 1
                if hits["n"] == int(nth):
                    os._exit(17)  # dies like SIGKILL: no finally blocks, no h5py close
        _crash.hook = hook
    store = (st.EmbeddingStore.open(path) if os.path.exists(path)
             else st.EmbeddingStore.create(path, 16, {"checkpoint_sha256": "x"}, {"site": "str"}))
    ids = [f"r{i:04d}" for i in range(n)]
    todo = [i for i, r in zip(range(n), ids) if r not in set(np.array(ids)[store.contains(ids)])]
    for b in range(0, len(todo), batch):
        rows = todo[b:b + batch]
        vec = np.stack([np.random.default_rng(i).standard_normal(32).astype(np.float32) for i in rows])
        store.append([ids[i] for i in rows], vec[:, :16], vec[:, 16:], texts=[f"t{i}" for i in rows],
                     labels=[{"L%d" % (i % 3): 1.0} for i in rows],
                     meta={"age": [float(i) for i in rows], "site": [str(i % 5) for i in rows]})
        time.sleep(pause)
    store.compact()
    store.close()
    print("done", flush=True)
""")


def _run(path: Path, crash: str = "none", pause: float = 0.0, wait: bool = True):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    args = [sys.executable, "-c", DRIVER, str(path), str(N_RECORDS), str(BATCH), crash, str(pause)]
    if not wait:
        return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)


def _snapshot(path: Path) -> dict:
    s = EmbeddingStore.open(path)
    return {"ids": s.ids, "ecg": s.ecg(), "text": s.text(), "texts": s.texts(), "labels": s.labels_json(),
            "age": s.meta("age"), "site": s.meta("site").tolist(), "uuid": s.uuid}


def _assert_same(got: dict, ref: dict) -> None:
    assert got["ids"] == ref["ids"]
    assert got["ecg"].tobytes() == ref["ecg"].tobytes() and got["text"].tobytes() == ref["text"].tobytes()
    for key in ("texts", "labels", "site"):
        assert got[key] == ref[key], key
    assert np.array_equal(got["age"], ref["age"])


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("ref") / "store.h5"
    proc = _run(path)
    assert proc.returncode == 0, proc.stderr
    return _snapshot(path)


def _whole_batches_only(path: Path, ref: dict) -> None:
    if not path.exists():
        return  # died inside create(): nothing to check, the rerun starts afresh
    snap = _snapshot(path)  # must open after any crash
    n = len(snap["ids"])
    assert n % BATCH == 0, f"{n} rows: a partial batch is visible"
    assert snap["ids"] == ref["ids"][:n]
    assert snap["ecg"].tobytes() == ref["ecg"][:n].tobytes()


@pytest.mark.parametrize("crash", [
    "after-part:4",       # between batches: batch 4 is on disk, nothing else
    "before-part:5",      # between batches, before batch 5 starts
    "mid-write:5",        # inside create(): the store never appeared; the rerun creates it
    "mid-write:25",       # mid-batch: half of batch 1's datasets written to its temp file
    "before-replace:6",   # mid-batch: temp file complete and fsync'ed, not yet renamed
    "after-merge:1",      # tier merge written, its input parts not yet deleted
    "before-compact:1",   # all batches stored as parts
    "after-compact:1",    # new main file in place, parts not yet deleted
])
def test_crash_then_resume_equals_uninterrupted_run(tmp_path, reference, crash):
    path = tmp_path / "store.h5"
    proc = _run(path, crash)
    assert proc.returncode == 17, f"crash point {crash} never reached: {proc.stderr[-500:]}"
    _whole_batches_only(path, reference)
    proc = _run(path)
    assert proc.returncode == 0, proc.stderr
    snap = _snapshot(path)
    _assert_same(snap, reference)
    assert not list(path.parent.glob(".tmp-*")) and not list(Path(str(path) + ".parts").iterdir())


def test_sigkill_at_random_moments_then_resume(tmp_path, reference):
    """SIGKILL (no hook) at arbitrary times, twice, then finish: same store as uninterrupted."""
    path = tmp_path / "store.h5"
    rng = np.random.default_rng(0)
    for _ in range(2):
        proc = _run(path, pause=0.01, wait=False)
        deadline = time.time() + 30
        while not path.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        time.sleep(float(rng.uniform(0.0, 0.15)))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        if path.exists():
            _whole_batches_only(path, reference)
    proc = _run(path)
    assert proc.returncode == 0, proc.stderr
    _assert_same(_snapshot(path), reference)


def test_merge_leftovers_are_shadowed_not_duplicated(tmp_path):
    """A merged part and its not-yet-deleted inputs coexist: readers count the rows once."""
    import indexing.store as st
    import indexing._crash as _crash

    path = tmp_path / "s.h5"
    store = EmbeddingStore.create(path, 4, {}, has_text=False)
    kept = []

    def keep_inputs(point: str) -> None:
        if point == "after-merge":
            kept.extend((p.name, p.read_bytes()) for p in store.parts_dir.iterdir() if "-L0" in p.name)

    _crash.hook = keep_inputs
    try:
        for b in range(_FANOUT):
            store.append([f"id{b}"], np.full((1, 4), b, np.float32))
    finally:
        _crash.hook = None
    store.close()
    for name, data in kept:  # put the merge inputs back, as a crash before their deletion would
        (store.parts_dir / name).write_bytes(data)
    again = EmbeddingStore.open(path)
    assert again.ids == [f"id{b}" for b in range(_FANOUT)]
    again.append(["more"], np.zeros((1, 4), np.float32))  # the next writer cleans the leftovers up
    assert len(list(again.parts_dir.iterdir())) == 2
    assert EmbeddingStore.open(path).ids == [f"id{b}" for b in range(_FANOUT)] + ["more"]
    again.close()
