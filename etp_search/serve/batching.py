"""Dynamic micro-batching: compute threads encode and search the queries of concurrent requests.

Each search request becomes a ``Job`` on its lane's queue. A compute thread takes the first job waiting
and every other job that arrived meanwhile (up to ``MAX_BATCH``), so a lone client never waits for
a batch to fill and concurrent clients share one forward pass:

1. the texts of the batch go through the text tower in one call and stored records are looked up
   in memory; jobs with the same snapshot, target and filters are searched as one (B, dim) FAISS
   search (``Searcher.search_batch``), each job with its own k, excluded row and hits, and answered;
2. then the (preprocessed) uploaded ECGs of one length go through the ECG tower in one call and
   are searched the same way. The ECG forward is the batch's most expensive part (ResNet-18: ~43 ms
   for 4 ECGs on one thread), so the text and record queries of the batch do not wait for it.

Why: py-spy on the previous server under 16 clients put most of its CPU in encoding texts one
at a time (bench_serve.py times one text-tower forward of 1, 4 and 16 texts: 16 cost ~3x one, not
16x), and per-query torch and FAISS calls from several threads fought for the GIL and the cores. One thread owns the model and FAISS
for searches, with one torch and one OpenMP thread, so nothing oversubscribes the cores; the
event loop and the worker pool (upload parsing, plots) use the other.

Text vectors are remembered (an LRU of ``text_cache`` texts, on the text lane's thread only): the same
query text (the page re-asks it when k or a filter changes; "atrial fibrillation" is asked by
everyone) is encoded once. The model is fixed for the server's life, so a remembered vector is the
vector the tower would give again.

Two lanes (the default, ``lanes=2``): texts and stored records go to one compute thread, uploads to
a second one, each batching its own queue the same way, each on one torch and one OpenMP thread.
An upload's ECG forward (ResNet-18: ~18 ms alone, ~150 ms for 16) then no longer holds up the text
and record queries that arrive while it runs, and the two forwards use both cores; bench_serve.py
measures both settings in one run (``--lanes 1``: every search on one thread, in the order above).
Text vectors are only ever touched by the text lane.

A job that fails (unknown id, bad filter) fails alone: a batch whose encoding raises is retried
one job at a time, and a search group's error goes to the jobs of that group only.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

logger = logging.getLogger(__name__)

#: Most queries computed in one batch (bounds one forward pass's memory and a batch's latency).
MAX_BATCH = 32
#: Query texts whose vectors the compute thread remembers (a vector is 1 KB at 256-d).
TEXT_CACHE = 1024
#: Compute threads: 2 gives uploads (the ECG forward) their own thread beside texts and records.
LANES = 2


@dataclass
class Job:
    """One search waiting for the compute thread."""

    kind: str  # "text": payload is the text; "ecg": a preprocessed (C, L) array; "record": a record id
    payload: Any
    k: int
    target: str
    where: tuple[str, ...]
    snap: Any  # the snapshot current when the request came in
    future: Future = field(default_factory=Future)
    vec: np.ndarray | None = None
    exclude_row: int | None = None


class Batcher:
    """The compute threads (one per lane) and their queues; ``submit`` returns a Future of ``(hits, snapshot)``.

    Args:
        encode_text: list of texts -> (B, D) vectors.
        encode_ecg: (B, C, L) preprocessed ECGs -> (B, D) vectors.
        max_batch: most jobs in one batch.
        text_cache: most query texts whose vectors are remembered (0: encode every text query).
        lanes: 1 (every search on one thread) or 2 (uploads on a second thread).
    """

    def __init__(self, encode_text: Callable[[list[str]], np.ndarray],
                 encode_ecg: Callable[[np.ndarray], np.ndarray], max_batch: int = MAX_BATCH,
                 text_cache: int = TEXT_CACHE, lanes: int = LANES):
        if lanes not in (1, 2):
            raise ValueError(f"lanes must be 1 or 2 (got {lanes})")
        self._encode_text = encode_text
        self._encode_ecg = encode_ecg
        self.max_batch = max(1, max_batch)
        self.text_cache = max(0, text_cache)
        self.lanes = lanes
        self._text_vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self.text_hits = 0
        self.texts_encoded = 0
        # lane 0: texts and stored records (and uploads, with one lane); lane 1: uploads
        self._queues: list[queue.SimpleQueue[Job | None]] = [queue.SimpleQueue() for _ in range(lanes)]
        self._stats_lock = threading.Lock()
        self.batches = 0
        self.jobs = 0
        self.largest = 0
        names = ["etp-serve-compute", "etp-serve-ecg"]
        self._threads = [threading.Thread(target=self._loop, args=(q,), daemon=True, name=names[i])
                         for i, q in enumerate(self._queues)]
        for t in self._threads:
            t.start()

    def submit(self, job: Job) -> Future:
        lane = 1 if self.lanes == 2 and job.kind == "ecg" else 0
        if not self._threads[lane].is_alive():
            raise RuntimeError("the server is shutting down")
        self._queues[lane].put(job)
        return job.future

    def close(self) -> None:
        for q in self._queues:
            q.put(None)
        for t in self._threads:
            t.join(timeout=10)

    @property
    def stats(self) -> dict[str, Any]:
        with self._stats_lock:
            return {"batches": self.batches, "queries": self.jobs, "largest_batch": self.largest,
                    "mean_batch": round(self.jobs / self.batches, 2) if self.batches else 0.0,
                    "text_cache": self.text_cache, "text_cache_hits": self.text_hits,
                    "texts_encoded": self.texts_encoded}

    # ------------------------------------------------------------------ the compute threads

    def _loop(self, jobs_queue: queue.SimpleQueue[Job | None]) -> None:
        import torch

        stop = False
        while not stop:
            job = jobs_queue.get()
            if job is None:
                break
            jobs = [job]
            while len(jobs) < self.max_batch:
                try:
                    nxt = jobs_queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                jobs.append(nxt)
            with self._stats_lock:
                self.batches += 1
                self.jobs += len(jobs)
                self.largest = max(self.largest, len(jobs))
            try:
                with torch.inference_mode():
                    self._run(jobs)
            except BaseException as exc:  # never leave a request waiting for ever
                logger.exception("batch of %d queries failed", len(jobs))
                for j in jobs:
                    _fail(j, exc)
        while True:  # refuse what is still queued
            try:
                left = jobs_queue.get_nowait()
            except queue.Empty:
                break
            if left is not None:
                _fail(left, RuntimeError("the server is shutting down"))

    def _run(self, jobs: list[Job]) -> None:
        """Text and stored-record queries first (cheap to encode), searched and answered; then the
        uploads' ECG forward, whose cost grows fastest with the batch, and their searches. A text
        query that arrived with a batch of uploads does not wait for the ECG tower."""
        quick = [j for j in jobs if j.kind != "ecg"]
        texts = [j for j in quick if j.kind == "text"]
        if texts:
            self._text_jobs(texts)
        for j in quick:
            if j.kind == "record":
                self._record_vector(j)
        self._search(quick)
        uploads = [j for j in jobs if j.kind == "ecg"]
        by_shape: dict[tuple, list[Job]] = {}
        for j in uploads:
            by_shape.setdefault(tuple(j.payload.shape), []).append(j)
        for group in by_shape.values():
            self._vectors(group, lambda js: self._encode_ecg(np.stack([j.payload for j in js])))
        self._search(uploads)

    @staticmethod
    def _record_vector(j: Job) -> None:
        try:
            snap = j.snap
            with snap.lock:
                row = snap.store.row_of(str(j.payload))
                if row >= snap.n:
                    from etp_search.errors import EtpError

                    raise EtpError(f"record {j.payload!r} is being added; try again in a moment")
                j.vec = snap.searcher.record_vector(row)
            # ECG -> ECG leaves the query itself out; ECG -> report keeps its own report.
            j.exclude_row = row if j.target == "ecg" else None
        except Exception as exc:
            _fail(j, exc)

    @staticmethod
    def _search(jobs: list[Job]) -> None:
        """Jobs with the same snapshot, target and filters as one FAISS search; each its own hits."""
        groups: dict[tuple, list[Job]] = {}
        for j in jobs:
            if not j.future.done():
                groups.setdefault((id(j.snap), j.target, j.where), []).append(j)
        for group in groups.values():
            snap = group[0].snap
            try:
                results = snap.searcher.search_batch(np.concatenate([j.vec for j in group]),
                                                     [min(j.k, snap.n) for j in group], group[0].target,
                                                     group[0].where, [j.exclude_row for j in group])
            except Exception as exc:
                for j in group:
                    _fail(j, exc)
                continue
            for j, hits in zip(group, results):
                if not j.future.done():
                    j.future.set_result((hits, snap))

    def _text_jobs(self, jobs: list[Job]) -> None:
        """Vectors of text jobs: remembered ones looked up, each new distinct text encoded once
        (with ``text_cache`` 0, every job's text is encoded, in one forward)."""
        if not self.text_cache:
            self._vectors(jobs, lambda js: self._encode_text([j.payload for j in js]))
            with self._stats_lock:
                self.texts_encoded += len(jobs)
            return
        todo: dict[str, list[Job]] = {}
        for j in jobs:
            vec = self._text_vectors.get(j.payload)
            if vec is not None:
                self._text_vectors.move_to_end(j.payload)
                j.vec = vec
                with self._stats_lock:
                    self.text_hits += 1
            else:
                todo.setdefault(j.payload, []).append(j)
        if not todo:
            return
        firsts = [group[0] for group in todo.values()]
        self._vectors(firsts, lambda js: self._encode_text([j.payload for j in js]))
        with self._stats_lock:
            self.texts_encoded += len(firsts)
        for text, group in todo.items():
            vec = group[0].vec
            for j in group[1:]:
                if vec is not None:
                    j.vec = vec
                else:
                    _fail(j, group[0].future.exception() or RuntimeError("encoding failed"))
            if vec is not None:
                self._text_vectors[text] = vec
                while len(self._text_vectors) > self.text_cache:
                    self._text_vectors.popitem(last=False)

    @staticmethod
    def _vectors(jobs: list[Job], encode: Callable[[list[Job]], np.ndarray]) -> None:
        """Encode ``jobs`` in one call; when that raises, one at a time, so only the bad one fails."""
        try:
            vecs = np.asarray(encode(jobs), np.float32)
        except Exception:
            if len(jobs) == 1:
                raise_into(jobs[0], encode)
                return
            for j in jobs:
                raise_into(j, encode)
            return
        for i, j in enumerate(jobs):
            j.vec = vecs[i:i + 1]


def raise_into(job: Job, encode: Callable[[list[Job]], np.ndarray]) -> None:
    try:
        job.vec = np.asarray(encode([job]), np.float32)[:1]
    except Exception as exc:
        _fail(job, exc)


def _fail(job: Job, exc: BaseException) -> None:
    if not job.future.done():
        job.future.set_exception(exc)
