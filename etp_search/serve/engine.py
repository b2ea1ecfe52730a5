"""What the server holds in memory: the model, the store and its FAISS indexes, loaded once.

A growing store (``etp-search index`` appending while the server runs) is served from *snapshots*:
each snapshot is one open view of the store (whole batches only, as the store guarantees) and a
``Searcher`` whose read-only views (``indexing.view``) search the saved index for the rows it covers
and the rows appended since exactly. A background thread notices new part files, reopens the store
and swaps the snapshot in one assignment, sharing the loaded indexes (nothing is copied or built);
requests already running finish on the snapshot they started with, so none sees half an update.

Concurrency: searches go to two compute threads (``serve.batching``: one for texts and stored
records, one for uploads) that encode the texts and ECGs of concurrent requests in one forward pass each and runs their FAISS searches as batched
searches, on one torch and one OpenMP thread (two torch threads under load turned a 6 ms text
encoding into ~290 ms on this project's machine). Other CPU work (parsing uploads, preprocessing,
plots, zero-shot) runs in a bounded thread pool (``workers``, default: the cores). What a hit shows
(reports, labels, metadata) and the ECG vectors are held in memory per snapshot (``ColumnCache``),
so answering reads no HDF5; store reads that remain are serialised by the snapshot's lock.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence, TypeVar

import numpy as np

from etp_search.errors import DataError, EtpError
from etp_search.records import EcgRecord
from etp_search.search import Hit, Searcher, Target, check_text
from etp_search.serve.batching import LANES, MAX_BATCH, TEXT_CACHE, Batcher, Job

if TYPE_CHECKING:
    from etp_search.preprocess import Preset
    from etp_search.readers import Reader
    from indexing.index_files import Which
    from indexing.store import EmbeddingStore

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Raw signals kept for thumbnails and plots (a 10 s 100 Hz record is ~50 kB).
SIGNAL_CACHE = 256
#: Class-prompt embeddings kept per task / free label set.
PROMPT_CACHE = 64


class NotAvailableError(EtpError):
    """Something the request needs is not on this server (e.g. the dataset's raw signals)."""


@dataclass
class Snapshot:
    """One consistent view: a store opened at some moment and indexes over exactly its rows."""

    searcher: Searcher  # over this view's store: filters, hit metadata and searches, never encoding
    n: int
    signature: tuple

    @property
    def lock(self) -> threading.RLock:
        """Serialises this snapshot's store reads (the Searcher's own lock)."""
        return self.searcher.lock

    @property
    def store(self) -> EmbeddingStore:
        return self.searcher.store


def _lru_get(cache: OrderedDict, key: Any) -> Any:
    value = cache.get(key)
    if value is not None:
        cache.move_to_end(key)
    return value


def _lru_put(cache: OrderedDict, key: Any, value: Any, limit: int) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > limit:
        cache.popitem(last=False)


class Engine:
    """Loads model, store and indexes once and answers queries from the current snapshot.

    Args:
        store_path: The embedding store written by ``etp-search index``.
        checkpoint: Checkpoint for encoding queries; default: the store's (its provenance).
        device: "cpu", "cuda" or None (auto).
        factory: FAISS factory when an index must be built ("auto": exact below the IVF threshold).
        workers: Threads for uploads, plots and zero-shot (default: the machine's cores).
        threads: Torch intra-op threads (1 is fastest under concurrent load).
        refresh_s: Seconds between checks for rows appended by another process; 0 disables.
        max_batch: Most concurrent searches the compute thread encodes and searches at once (1: none).
        text_cache: Most query texts whose vectors are remembered (0: every text query is encoded).
        lanes: Compute threads: 1 (every search on one thread) or 2 (uploads' ECG forward on its own).
    """

    def __init__(self, store_path: str | Path, checkpoint: str | Path | None = None, device: str | None = None,
                 factory: str = "auto", workers: int | None = None, threads: int = 1, refresh_s: float = 2.0,
                 max_batch: int = MAX_BATCH, text_cache: int = TEXT_CACHE, lanes: int = LANES):
        import faiss
        import torch

        torch.set_num_threads(max(1, threads))
        faiss.omp_set_num_threads(1)  # one query per worker; OpenMP wake-ups cost more than they give
        self.store_path = Path(store_path)
        self.factory = factory
        self.workers = max(1, workers or os.cpu_count() or 1)
        first = Searcher.open(self.store_path, checkpoint=checkpoint, device=device, factory=factory,
                              cache_columns=True)
        first.store.check_not_empty()
        self.model = first.model  # loads the checkpoint and checks it is the one that wrote the store
        self.model.eval()
        self.checkpoint = first.checkpoint_path()
        self._device = next(self.model.parameters()).device
        self.preset = self._preset(first.store.provenance)
        self.logit_scale = float(self.model.scale().detach())
        # A HF fast tokenizer mutates itself only when its padding/truncation settings change, which the
        # first call fixes for good (every call passes the same ones); warmed up here, before any
        # concurrency, it is then only read, and text queries encode in parallel.
        self.encode_text(["warm-up"])
        self._reader: Reader | None = None
        self._reader_lock = threading.Lock()
        self._signals: OrderedDict[str, EcgRecord] = OrderedDict()
        self._prompts: OrderedDict[tuple, tuple[list[str], np.ndarray, list[int]]] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self.snapshot = self._build_snapshot(first, self._signature())
        self.pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="etp-serve")
        self.batcher = Batcher(self.encode_text, self.encode_preprocessed, max_batch=max_batch,
                               text_cache=text_cache, lanes=lanes)
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None
        if refresh_s > 0:
            self._refresher = threading.Thread(target=self._refresh_loop, args=(refresh_s,), daemon=True,
                                               name="etp-serve-refresh")
            self._refresher.start()
        logger.info("serving %s: %d rows, checkpoint %s, %d workers", self.store_path, self.snapshot.n,
                    self.checkpoint.name, self.workers)

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        self._stop.set()
        if self._refresher is not None:
            self._refresher.join(timeout=5)
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.batcher.close()

    def submit(self, fn: Callable[..., T], *args: Any) -> Future:
        """Run ``fn(*args)`` in the bounded worker pool."""
        return self.pool.submit(fn, *args)

    @staticmethod
    def _preset(provenance: dict) -> Preset:
        from etp_search.preprocess import Preset, get_preset

        stored = provenance.get("preset")
        if isinstance(stored, dict):
            return Preset.from_dict(stored)
        return get_preset(stored or "etp-100hz")

    # ------------------------------------------------------------------ snapshots

    def _index_files_changed(self, snap: Snapshot) -> bool:
        """True when a saved index now covers more rows than the snapshot's view of it."""
        import json

        for which, view in snap.searcher.views.items():
            try:
                rows = int(json.loads(Path(f"{self.store_path}.{which}.faiss.json").read_text())["n_rows"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if rows != view.n_indexed:
                return True
        return False

    def _signature(self) -> tuple:
        """Cheap fingerprint of the store's files: changes whenever a batch lands or a merge replaces files."""
        try:
            st = os.stat(self.store_path)
        except OSError:
            return ()
        parts_dir = Path(f"{self.store_path}.parts")
        try:
            parts = tuple(sorted(os.listdir(parts_dir)))
        except OSError:
            parts = ()
        return (st.st_ino, st.st_mtime_ns, st.st_size, parts)

    def _build_snapshot(self, searcher: Searcher, signature: tuple) -> Snapshot:
        store = searcher.store
        kinds: list[Which] = ["ecg", "text"] if store.has_text else ["ecg"]
        for which in kinds:
            searcher.view(which)  # load (never build) the saved indexes now, not on the first request
        return Snapshot(searcher, len(store), signature)

    def refresh(self) -> bool:
        """Pick up rows another process appended since the current snapshot; True when it changed."""
        from indexing.errors import StoreError
        from indexing.store import EmbeddingStore

        with self._refresh_lock:
            old = self.snapshot
            signature = self._signature()
            if not signature or signature == old.signature:
                return False
            try:
                store = EmbeddingStore.open(self.store_path)
            except StoreError as exc:  # caught mid-merge or mid-rebuild: the next tick tries again
                logger.info("store %s not readable right now (%s); keeping %d rows", self.store_path, exc, old.n)
                return False
            want = old.store.provenance.get("checkpoint_sha256")
            if store.provenance.get("checkpoint_sha256") != want:
                logger.error("store %s was rebuilt with another checkpoint; keeping the %d rows loaded; "
                             "restart `etp-search serve` to serve the new store", self.store_path, old.n)
                store.close()
                return False
            n = len(store)
            if store.uuid != old.store.uuid or n < old.n or self._index_files_changed(old):
                # a new store under the same name, or `index` saved new index files: load them
                snap = self._build_snapshot(Searcher(store, factory=self.factory, cache_columns=True), signature)
            else:  # same index objects; the rows appended since are the views' exact-search tail
                snap = Snapshot(old.searcher.with_store(store), n, signature)
            self.snapshot = snap  # one assignment: the swap is atomic for every other thread
            logger.info("store %s: now serving %d rows (was %d)", self.store_path, n, old.n)
            return True

    def _refresh_loop(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            try:
                self.refresh()
            except Exception:  # keep serving the last good snapshot whatever a refresh hit
                logger.exception("refreshing %s failed; still serving %d rows", self.store_path, self.snapshot.n)

    # ------------------------------------------------------------------ encoding

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model.encode_text(list(texts)).float().cpu().numpy()

    def prepare_signal(self, signal: np.ndarray, fs: float) -> np.ndarray:
        """A raw (12, L) ECG in mV at ``fs`` Hz -> the model's input, preprocessed exactly like ``index``."""
        from etp_search.preprocess import preprocess

        signal = np.asarray(signal, dtype=np.float32)
        if signal.ndim != 2 or signal.shape[0] != 12:
            raise DataError(f"an ECG must be (12, samples) in the standard lead order; got shape {signal.shape}")
        return preprocess(signal, fs, self.preset)[0]

    def encode_preprocessed(self, x: np.ndarray) -> np.ndarray:
        """(B, C, L) preprocessed ECGs -> (B, D) vectors."""
        import torch

        with torch.inference_mode():
            return self.model.encode_ecg(torch.from_numpy(np.ascontiguousarray(x)).to(self._device)).float().cpu().numpy()

    def encode_signal(self, signal: np.ndarray, fs: float) -> np.ndarray:
        """A raw (12, L) ECG in mV at ``fs`` Hz -> its (1, D) vector, preprocessed exactly like ``index``."""
        return self.encode_preprocessed(self.prepare_signal(signal, fs)[None])

    def record_vector(self, record_id: str, snap: Snapshot | None = None) -> tuple[np.ndarray, int]:
        snap = snap or self.snapshot
        with snap.lock:
            row = snap.store.row_of(str(record_id))
            if row >= snap.n:
                raise EtpError(f"record {record_id!r} is being added; try again in a moment")
            return snap.searcher.record_vector(row), row

    # ------------------------------------------------------------------ search

    def search(self, vec: np.ndarray, k: int, target: Target = "ecg", where: Sequence[str] = (),
               exclude_row: int | None = None, snap: Snapshot | None = None) -> tuple[list[Hit], Snapshot]:
        """Nearest ECGs ("ecg") or reports ("report") to ``vec``; k is capped at the rows that can match."""
        snap = snap or self.snapshot
        return snap.searcher.search_vector(vec, min(k, snap.n), target, where, exclude_row), snap

    # The submit_* methods queue a search for the compute thread (``serve.batching``) and return a
    # Future of (hits, snapshot): the snapshot it searched, so a response can say which rows it saw
    # even when a refresh swaps the snapshot meanwhile. *_hits wait for it; query_* mirror Searcher.

    def _submit(self, kind: str, payload: str | np.ndarray, k: int, target: Target, where: Sequence[str]) -> Future:
        return self.batcher.submit(Job(kind, payload, int(k), target, tuple(where), self.snapshot))

    def submit_text(self, text: str, k: int = 10, target: Target = "ecg", where: Sequence[str] = ()) -> Future:
        if not text or not text.strip():
            raise EtpError('the query text is empty; type words to search for, e.g. "atrial fibrillation"')
        check_text(text)
        return self._submit("text", text.strip(), k, target, where)

    def submit_signal(self, x: np.ndarray, k: int = 10, target: Target = "ecg", where: Sequence[str] = ()) -> Future:
        """``x``: one ECG as ``prepare_signal`` returns it."""
        return self._submit("ecg", np.asarray(x, np.float32), k, target, where)

    def submit_record(self, record_id: str, k: int = 10, target: Target = "ecg", where: Sequence[str] = ()) -> Future:
        return self._submit("record", str(record_id), k, target, where)

    def text_hits(self, text: str, k: int = 10, target: Target = "ecg", where: Sequence[str] = ()) -> tuple[list[Hit], Snapshot]:
        return self.submit_text(text, k, target, where).result()

    def signal_hits(self, signal: np.ndarray, fs: float, k: int = 10, target: Target = "ecg",
                    where: Sequence[str] = ()) -> tuple[list[Hit], Snapshot]:
        return self.submit_signal(self.prepare_signal(signal, fs), k, target, where).result()

    def record_hits(self, record_id: str, k: int = 10, target: Target = "ecg",
                    where: Sequence[str] = ()) -> tuple[list[Hit], Snapshot]:
        return self.submit_record(record_id, k, target, where).result()

    def query_text(self, text: str, k: int = 10, target: Target = "ecg", where: Sequence[str] = ()) -> list[Hit]:
        return self.text_hits(text, k, target, where)[0]

    def query_signal(self, signal: np.ndarray, fs: float, k: int = 10, target: Target = "ecg",
                     where: Sequence[str] = ()) -> list[Hit]:
        return self.signal_hits(signal, fs, k, target, where)[0]

    def query_record(self, record_id: str, k: int = 10, target: Target = "ecg", where: Sequence[str] = ()) -> list[Hit]:
        return self.record_hits(record_id, k, target, where)[0]

    # ------------------------------------------------------------------ records

    def record(self, record_id: str) -> dict[str, Any]:
        """A stored record's metadata, labels and report."""
        snap = self.snapshot
        with snap.lock:
            row = snap.store.row_of(str(record_id))
            hit = snap.searcher.hits(np.array([row]), np.array([1.0]))[0]
            store = snap.store
            extra = {c: store.meta(c, np.array([row]))[0] for c in store.meta_columns if c not in hit.meta}
        meta = {**hit.meta, **{c: v.item() if isinstance(v, np.generic) else v for c, v in extra.items()}}
        return {"id": hit.id, "row": row, "report": hit.text, "labels": hit.labels, "meta": meta}

    def record_signal(self, record_id: str) -> EcgRecord:
        """The raw signal of a stored record, re-read from the dataset folder the store was built from.

        The id is looked up in the store first, so only records the indexer wrote are ever read.
        """
        snap = self.snapshot
        with snap.lock:
            snap.store.row_of(str(record_id))
            prov = dict(snap.store.provenance)
        with self._cache_lock:
            rec = _lru_get(self._signals, record_id)
        if rec is not None:
            return rec
        with self._reader_lock:
            if self._reader is None:
                self._reader = self._open_reader(prov)
            from etp_search.readers.base import SkipRecord

            try:
                rec = self._reader.read(str(record_id))
            except SkipRecord as exc:
                raise NotAvailableError(f"the signal of record {record_id!r} cannot be read on this server ({exc})") from None
        with self._cache_lock:
            _lru_put(self._signals, record_id, rec, SIGNAL_CACHE)
        return rec

    @staticmethod
    def _open_reader(prov: dict) -> Reader:
        from etp_search.search import source_reader

        try:
            return source_reader(prov, "plots need the folder the store was indexed from on this server")
        except DataError as exc:
            raise NotAvailableError(str(exc)) from None

    # ------------------------------------------------------------------ zero-shot

    def class_vectors(self, labels: Sequence[str] | None = None, task: str | None = None,
                      prompts: str = "default") -> tuple[list[str], np.ndarray, list[int]]:
        """(classes, (C, D) ensembled class embeddings, prompts per class) for a free label set or a task."""
        from etp_search.evaluation.prompts import BUILTIN_SETS, class_prompts, free_label_prompts
        from etp_search.evaluation.zeroshot import class_embeddings, encode_prompts

        if (labels is None) == (task is None):
            raise EtpError("give either labels (e.g. atrial fibrillation, sinus rhythm) or a task, not both")
        if prompts not in BUILTIN_SETS:  # a prompt *file* would be a path chosen by the client
            raise EtpError(f"unknown prompt set {prompts!r}; use one of: {', '.join(BUILTIN_SETS)}")
        key = ("task", task, prompts) if task is not None else ("labels", tuple(labels or ()))
        with self._cache_lock:
            cached = _lru_get(self._prompts, key)
        if cached is not None:
            return cached
        table = class_prompts(task, prompts) if task is not None else free_label_prompts(list(labels or ()))
        vecs = encode_prompts(self.model, table)
        out = (list(table), class_embeddings(vecs), [len(p) for p in table.values()])
        with self._cache_lock:
            _lru_put(self._prompts, key, out, PROMPT_CACHE)
        return out

    def zeroshot(self, vec: np.ndarray, labels: Sequence[str] | None = None, task: str | None = None,
                 prompts: str = "default") -> list[dict[str, Any]]:
        """Score one ECG vector against each class: cosine, and a softmax over classes at the model's scale."""
        classes, class_vecs, n_prompts = self.class_vectors(labels, task, prompts)
        v = np.asarray(vec, np.float32).reshape(-1)
        v = v / max(float(np.linalg.norm(v)), 1e-12)
        cos = class_vecs @ v
        logits = self.logit_scale * cos
        prob = np.exp(logits - logits.max())
        prob /= prob.sum()
        desc = {}
        if task is not None:
            from etp_search.labels import get_task

            desc = get_task(task).description
        order = np.argsort(-cos, kind="stable")
        return [{"label": classes[i], "description": str(desc.get(classes[i], classes[i])), "score": float(cos[i]),
                 "probability": float(prob[i]), "n_prompts": n_prompts[i]} for i in order]

    # ------------------------------------------------------------------ info

    def info(self) -> dict[str, Any]:
        from indexing.filters import columns

        import etp_search

        snap = self.snapshot
        prov = snap.store.provenance
        indexes = {w: v.summary for w, v in snap.searcher.views.items()}
        with snap.lock:
            cols = columns(snap.store)
        return {"rows": snap.n, "store": snap.store.path.name, "dim": snap.store.dim,
                "checkpoint": {"name": self.checkpoint.name, "sha256": prov.get("checkpoint_sha256")},
                "preset": self.preset.name, "dataset_format": prov.get("dataset_format"),
                "text_source": prov.get("text_source"), "indexes": indexes, "where_columns": cols,
                "workers": self.workers, "batching": {"max_batch": self.batcher.max_batch, "lanes": self.batcher.lanes, **self.batcher.stats},
                "version": etp_search.__version__}
