"""The server's compute thread (serve.batching) and the in-memory hit columns (hits.ColumnCache).

Batched answers must be the answers of one query at a time: the same ids and scores as the
in-process ``Searcher``'s single-query path, each job with its own k, exclusion and errors.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")

from indexing.errors import FilterError, RecordNotFoundError  # noqa: E402

from etp_search.search import Searcher  # noqa: E402
from etp_search.serve.batching import Batcher, Job  # noqa: E402
from etp_search.serve.engine import Engine  # noqa: E402

TEXTS = ["atrial fibrillation", "sinus rhythm", "left bundle branch block", "ST depression", "normal ECG"]


@pytest.fixture(scope="module")
def engine(example_store: Path):
    eng = Engine(example_store, refresh_s=0, workers=1)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def plain(example_store: Path):
    """The CLI's Searcher: hits read from the store, one query at a time."""
    with Searcher.open(example_store) as s:
        yield s


def _pairs(hits) -> list[tuple[str, float]]:
    return [(h.id, round(h.score, 5)) for h in hits]


def test_column_cache_gives_the_store_reads(example_store: Path, plain: Searcher) -> None:
    with Searcher.open(example_store, cache_columns=True) as cached:
        rows = np.arange(len(plain.store))[::-1]
        scores = np.linspace(1, 0, rows.size)
        want = [h.__dict__ for h in plain.hits(rows, scores)]
        got = [h.__dict__ for h in cached.hits(rows, scores)]
        assert got == want  # ids, reports, labels and metadata, every row
        assert np.array_equal(cached.record_vector(7), plain.store.ecg(np.array([7])))
        assert cached.allowed_rows(["sex=1"]) is cached.allowed_rows(["sex=1"])  # a filter's mask is kept
        assert np.array_equal(cached.allowed_rows(["sex=1"]), plain.allowed_rows(["sex=1"]))


def test_search_batch_equals_one_query_at_a_time(plain: Searcher) -> None:
    store = plain.store
    vecs = store.ecg(np.array([3, 11, 11, 40]))
    ks, excl = [5, 1, 9, 50], [3, 11, None, 40]
    for where in ((), ("sex=1",), ("age>=60",)):
        got = plain.search_batch(vecs, ks, "ecg", where, excl)
        want = [plain.search_vector(vecs[i:i + 1], ks[i], "ecg", where, excl[i]) for i in range(4)]
        assert [_pairs(h) for h in got] == [_pairs(h) for h in want]
        assert all(len(h) == min(k, n) for h, k, n in zip(got, ks, [len(w) for w in want]))
    assert 3 not in [h.row for h in plain.search_batch(vecs[:1], [49], "ecg", (), [3])[0]]
    text = plain.search_batch(vecs[:2], [4, 4], "report")
    assert [_pairs(h) for h in text] == [_pairs(plain.search_vector(vecs[i:i + 1], 4, "report")) for i in range(2)]


def test_concurrent_jobs_share_one_batch_and_fail_alone(engine: Engine, plain: Searcher) -> None:
    """Jobs queued while the compute thread is busy go through in one batch; a bad id, a bad filter
    and a text the encoder rejects fail only their own request."""
    started, release, sizes = threading.Event(), threading.Event(), []

    def encode_text(texts: list[str]) -> np.ndarray:
        sizes.append(len(texts))
        if len(sizes) == 1:
            started.set()
            release.wait(30)  # hold the thread so the next jobs queue up behind this one
        if "boom" in texts:
            raise ValueError("the encoder rejects this text")
        return engine.encode_text(texts)

    batcher = Batcher(encode_text, engine.encode_preprocessed, text_cache=0)
    snap = engine.snapshot
    try:
        first = batcher.submit(Job("text", TEXTS[0], 5, "ecg", (), snap))
        assert started.wait(30)
        jobs = [Job("text", t, 3 + i, "ecg" if i % 2 else "report", (), snap) for i, t in enumerate(TEXTS)]
        jobs += [Job("record", "17", 4, "ecg", (), snap), Job("record", "17", 4, "report", ("sex=1",), snap),
                 Job("record", "no-such-id", 4, "ecg", (), snap), Job("text", TEXTS[1], 4, "ecg", ("nope=1",), snap),
                 Job("text", "boom", 4, "ecg", (), snap)]
        futures = [batcher.submit(j) for j in jobs]
        release.set()
        assert _pairs(first.result(30)[0]) == _pairs(plain.query_text(TEXTS[0], 5))
        for i, t in enumerate(TEXTS):
            hits, seen = futures[i].result(30)
            assert seen is snap
            assert _pairs(hits) == _pairs(plain.query_text(t, 3 + i, "ecg" if i % 2 else "report"))
        assert _pairs(futures[5].result(30)[0]) == _pairs(plain.query_record("17", 4))
        assert _pairs(futures[6].result(30)[0]) == _pairs(plain.query_record("17", 4, "report", ["sex=1"]))
        with pytest.raises(RecordNotFoundError):
            futures[7].result(30)
        with pytest.raises(FilterError):
            futures[8].result(30)
        with pytest.raises(ValueError, match="rejects"):
            futures[9].result(30)
        # the 7 queued texts went in one forward; it raised, so they were retried one at a time
        assert sizes[:2] == [1, 7] and len(sizes) == 2 + 7
        assert batcher.stats["batches"] == 2 and batcher.stats["largest_batch"] == 10
    finally:
        release.set()
        batcher.close()
    with pytest.raises(RuntimeError, match="shutting down"):
        batcher.submit(Job("text", "x", 1, "ecg", (), snap))


def test_remembered_text_vectors_give_the_same_hits_and_skip_the_tower(engine: Engine, plain: Searcher) -> None:
    """A text asked again (or twice in one batch) is encoded once; its hits are those of a fresh
    encoding; a failed text is not remembered; the cache keeps at most ``text_cache`` texts."""
    seen: list[list[str]] = []

    def encode_text(texts: list[str]) -> np.ndarray:
        seen.append(list(texts))
        if "boom" in texts:
            raise ValueError("the encoder rejects this text")
        return engine.encode_text(texts)

    batcher = Batcher(encode_text, engine.encode_preprocessed, text_cache=3)
    snap = engine.snapshot
    try:
        for rnd in range(2):
            futures = [batcher.submit(Job("text", t, 4, "ecg", (), snap)) for t in TEXTS[:3]]
            for t, f in zip(TEXTS[:3], futures):
                assert _pairs(f.result(30)[0]) == _pairs(plain.query_text(t, 4)), rnd
        assert sorted(t for batch in seen for t in batch) == sorted(TEXTS[:3])  # each encoded once
        assert batcher.stats["text_cache_hits"] == 3 and batcher.stats["texts_encoded"] == 3
        for _ in range(2):
            with pytest.raises(ValueError, match="rejects"):
                batcher.submit(Job("text", "boom", 4, "ecg", (), snap)).result(30)
        assert sum(b.count("boom") for b in seen) >= 2  # asked again: encoded again, never remembered
        batcher.submit(Job("text", TEXTS[3], 4, "ecg", (), snap)).result(30)  # a 4th text pushes out the oldest
        n = len(seen)
        batcher.submit(Job("text", TEXTS[0], 4, "ecg", (), snap)).result(30)
        assert len(seen) == n + 1 and seen[-1] == [TEXTS[0]]
    finally:
        batcher.close()


def test_a_text_query_batched_with_uploads_does_not_wait_for_the_ecg_tower(engine: Engine, plain: Searcher) -> None:
    """Within one batch, text and stored-record queries are answered before the uploads' ECG forward
    (the slow part of a batch), and the uploads still get their own hits."""
    held, release, in_ecg, ecg_go = threading.Event(), threading.Event(), threading.Event(), threading.Event()
    texts_seen: list[int] = []

    def encode_text(texts: list[str]) -> np.ndarray:
        texts_seen.append(len(texts))
        if len(texts_seen) == 1:
            held.set()
            release.wait(30)  # hold the thread so the next jobs form one batch
        return engine.encode_text(texts)

    def encode_ecg(x: np.ndarray) -> np.ndarray:
        in_ecg.set()
        ecg_go.wait(30)
        return engine.encode_preprocessed(x)

    batcher = Batcher(encode_text, encode_ecg, text_cache=0, lanes=1)  # one thread: the batch's order
    snap = engine.snapshot
    rec17 = engine.record_signal("17")  # a real record, read again from the example folder
    x = np.asarray(engine.prepare_signal(rec17.signal, rec17.fs), np.float32)
    try:
        first = batcher.submit(Job("text", TEXTS[0], 3, "ecg", (), snap))
        assert held.wait(30)
        up = batcher.submit(Job("ecg", x, 4, "ecg", (), snap))
        text = batcher.submit(Job("text", TEXTS[1], 4, "ecg", (), snap))
        rec = batcher.submit(Job("record", "17", 4, "ecg", (), snap))
        release.set()
        assert in_ecg.wait(30)  # the compute thread is now inside the ECG tower ...
        assert _pairs(text.result(30)[0]) == _pairs(plain.query_text(TEXTS[1], 4))  # ... and these are answered
        assert _pairs(rec.result(30)[0]) == _pairs(plain.query_record("17", 4))
        assert not up.done()
        ecg_go.set()
        hits, _ = up.result(30)
        want = plain.search_vector(np.asarray(engine.encode_preprocessed(x[None]), np.float32), 4, "ecg")
        assert _pairs(hits) == _pairs(want)
        assert _pairs(first.result(30)[0]) == _pairs(plain.query_text(TEXTS[0], 3))
    finally:
        release.set()
        ecg_go.set()
        batcher.close()


def test_with_two_lanes_texts_arriving_during_an_ecg_forward_are_not_queued_behind_it(
        engine: Engine, plain: Searcher) -> None:
    """Two compute threads: while one upload's ECG forward runs, text and record queries that come
    after it are encoded, searched and answered on the other thread (with one thread they wait)."""
    in_ecg, ecg_go = threading.Event(), threading.Event()
    lanes_seen: set[str] = set()

    def encode_text(texts: list[str]) -> np.ndarray:
        lanes_seen.add(threading.current_thread().name)
        return engine.encode_text(texts)

    def encode_ecg(x: np.ndarray) -> np.ndarray:
        lanes_seen.add(threading.current_thread().name)
        in_ecg.set()
        ecg_go.wait(30)
        return engine.encode_preprocessed(x)

    batcher = Batcher(encode_text, encode_ecg, text_cache=0, lanes=2)
    snap = engine.snapshot
    rec17 = engine.record_signal("17")
    x = np.asarray(engine.prepare_signal(rec17.signal, rec17.fs), np.float32)
    try:
        up = batcher.submit(Job("ecg", x, 4, "ecg", (), snap))
        assert in_ecg.wait(30)  # the upload's forward is running and held ...
        for t in TEXTS[:3]:  # ... and texts asked after it are answered, one batch each
            assert _pairs(batcher.submit(Job("text", t, 4, "ecg", (), snap)).result(30)[0]) == _pairs(plain.query_text(t, 4))
        assert _pairs(batcher.submit(Job("record", "17", 4, "ecg", (), snap)).result(30)[0]) == _pairs(plain.query_record("17", 4))
        assert not up.done()
        ecg_go.set()
        want = plain.search_vector(np.asarray(engine.encode_preprocessed(x[None]), np.float32), 4, "ecg")
        assert _pairs(up.result(30)[0]) == _pairs(want)
        assert lanes_seen == {"etp-serve-compute", "etp-serve-ecg"}
    finally:
        ecg_go.set()
        batcher.close()
    with pytest.raises(ValueError, match="lanes must be 1 or 2"):
        Batcher(encode_text, encode_ecg, lanes=3)


def test_engine_reports_its_batches(engine: Engine) -> None:
    before = engine.info()["batching"]
    engine.query_text("sinus rhythm", 3)
    after = engine.info()["batching"]
    assert after["queries"] == before["queries"] + 1 and after["max_batch"] >= 8
    assert after["lanes"] == 2  # the default: uploads on their own compute thread
