"""Evaluations on an open embedding store, trained vectors beside an optional baseline store.

The array functions of this package do the arithmetic; this module picks the rows (split, task
labels), aligns a baseline store to the main store's record ids, matches free classes to stored
label keys and runs the same evaluation on both stores. Each function returns a typed result whose
``to_dict()`` is what ``etp-search zeroshot | probe | retrieval --json`` prints. Prompt models are
loaded at most once per checkpoint per call (a baseline built by the same checkpoint shares it);
a baseline store built by another checkpoint (e.g. ``--checkpoint random``) gets its own, since its
vectors live in that checkpoint's space.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Generic, Literal, Optional, Sequence, TypeVar

import numpy as np

from etp_search.errors import DataError, StoreMismatchError
from etp_search.evaluation.metrics import AucReport
from etp_search.evaluation.probe import ProbeResult
from etp_search.records import NORM_COLUMN

if TYPE_CHECKING:  # imported lazily at run time: indexing/ loads h5py, models/ loads torch
    from indexing.store import EmbeddingStore

    from etp_search.labels import Task
    from etp_search.models import EtpModel

logger = logging.getLogger(__name__)

#: Which records an evaluation reads: fold 10, fold 9 or every record.
Split = Literal["test", "val", "all"]
SPLITS = {"test": 10, "val": 9}
SPLIT_NAMES: tuple[Split, ...] = ("test", "val", "all")


def check_split(split: str) -> Split:
    """``split`` as a ``Split`` (what the CLI passes on), or the DataError for an unknown name."""
    for name in SPLIT_NAMES:
        if split == name:
            return name
    raise DataError(f"unknown split '{split}'; use test, val or all")


def folds_of(store: EmbeddingStore) -> np.ndarray:
    return np.asarray(store.meta("strat_fold"), dtype=np.int64)


def split_rows(store: EmbeddingStore, split: Split) -> tuple[np.ndarray, str]:
    """Rows of ``split`` ("test" = fold 10, "val" = fold 9, "all"); all rows when the store has no folds."""
    split = check_split(split)
    n = len(store)
    if n == 0:
        raise DataError(f"store {store.path} is empty; index a dataset into it first")
    folds = folds_of(store)
    if split == "all":
        return np.arange(n), f"all {n} records"
    if not (folds > 0).any():
        return np.arange(n), f"all {n} records (the store has no strat_fold, so no {split} split)"
    rows = np.flatnonzero(folds == SPLITS[split])
    if not len(rows):
        raise DataError(f"store {store.path} has no records in strat_fold {SPLITS[split]} ({split}); pass --split all")
    return rows, f"{split} split (strat_fold {SPLITS[split]}): {len(rows)} records"


def task_rows(store: EmbeddingStore, task: Task, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows that carry a label of ``task`` (others drop out, as in Strodthoff et al.) and their (N, C) matrix."""
    labels = store.labels(rows)
    keep = np.array([task.has_labels(lab) for lab in labels], dtype=bool)
    if not keep.any():
        keys = sorted({k for lab in labels for k in lab})[:8]
        seen = f"label keys seen: {', '.join(keys)}" if keys else "the records carry no labels"
        raise DataError(f"store {store.path} holds no labels for task '{task.name}' ({seen}); "
                        f"pick a task of the indexed dataset or index one labelled for it")
    return rows[keep], task.matrix([lab for lab, k in zip(labels, keep) if k])


def aligned_rows(base: EmbeddingStore, main: EmbeddingStore, rows: np.ndarray) -> np.ndarray:
    """The baseline store's rows for the same record ids as ``rows`` of the main store."""
    ids = main.ids_at(rows)
    have = base.contains(ids)
    if not have.all():
        raise DataError(f"baseline store {base.path} lacks {int((~have).sum())} of the {len(ids)} evaluated records; "
                        "index the same dataset into it")
    return np.asarray(base.rows_of(ids))


def free_class_labels(store: EmbeddingStore, rows: np.ndarray, classes: Sequence[str]) -> tuple[Optional[np.ndarray], list[str]]:
    """Match free classes to the stored label keys: (N, matched) ground truth (None: no match) and the unmatched."""
    from etp_search.evaluation.prompts import match_label_keys
    from etp_search.labels import get_task

    labels = store.labels(rows)
    keys = {k for lab in labels for k in lab}
    desc: dict[str, list[str]] = {}
    for name in ("all", "cpsc2018"):  # SCP statements and CPSC classes share some codes (NORM, PAC, PVC)
        for key, text in get_task(name).description.items():
            desc.setdefault(key, []).append(text)
    match = match_label_keys(list(classes), keys, desc)
    matched = {c: k for c, k in match.items() if k is not None}
    unmatched = [c for c, k in match.items() if k is None]
    if not matched:
        return None, unmatched
    Y = np.array([[1.0 if matched[c] in lab else 0.0 for c in matched] for lab in labels], dtype=np.float32)
    return Y, unmatched


# ---------------------------------------------------------------------------- prompt models

def load_prompt_model(store: EmbeddingStore, checkpoint: Optional[str]) -> EtpModel:
    """The model that encodes prompts for ``store``; Searcher refuses a checkpoint whose sha256 differs from the store's."""
    from etp_search.search import Searcher

    return Searcher(store, checkpoint=checkpoint).model


class PromptModels:
    """Loads each prompt checkpoint once: stores built by the same checkpoint share one model."""

    def __init__(self, loader: Callable[[EmbeddingStore, Optional[str]], EtpModel] = load_prompt_model):
        self._loader = loader
        self._models: dict[tuple[str, Optional[str]], EtpModel] = {}
        self.loads = 0

    def for_store(self, store: EmbeddingStore, checkpoint: Optional[str] = None) -> EtpModel:
        from etp_search.search import Searcher

        path = Path(Searcher(store, checkpoint=checkpoint).checkpoint_path()).resolve()
        key = (str(path), store.provenance.get("checkpoint_sha256"))
        if key not in self._models:
            self._models[key] = self._loader(store, checkpoint)
            self.loads += 1
        return self._models[key]


R = TypeVar("R")  # one store's run: ZeroShotRun, ProbeResult or RetrievalRun

_COMPARED = ("main", "baseline", "baseline_store")


@dataclass
class _Compared(Generic[R]):
    """A result's main run and, optionally, the same evaluation on a baseline store.

    The subclass's own fields (those with ``metadata={"json": False}`` aside) head ``to_dict()``, in
    their order; baseline_store, main and baseline (when there is one) follow. The three fields here
    are keyword-only, so they come after a subclass's own fields in ``__init__``.
    """

    main: R = field(kw_only=True)
    baseline: Optional[R] = field(default=None, kw_only=True)
    baseline_store: Optional[str] = field(default=None, kw_only=True)

    def add_baseline(self, store: EmbeddingStore, run: R) -> None:
        self.baseline, self.baseline_store = run, str(store.path)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in _COMPARED and f.metadata.get("json", True)}
        if self.baseline is not None:
            out["baseline_store"] = self.baseline_store
        out["main"] = self.main.to_dict()  # type: ignore[attr-defined]
        if self.baseline is not None:
            out["baseline"] = self.baseline.to_dict()  # type: ignore[attr-defined]
        return out


# ---------------------------------------------------------------------------- zero-shot

@dataclass
class ZeroShotRun:
    """Zero-shot on one store: top-1 assignments over all classes and, with ground truth, the AUC report."""

    assigned: dict[str, int]
    report: Optional[AucReport] = None

    def to_dict(self) -> dict[str, Any]:
        return {"assigned": self.assigned, **(self.report.to_dict() if self.report is not None else {})}


@dataclass
class ZeroShotResult(_Compared[ZeroShotRun]):
    task: Optional[str]
    prompts: str
    split: Split
    split_note: str
    n_records: int
    store: str
    no_ground_truth: list[str]
    title: str = field(default="", metadata={"json": False})


def _zeroshot_run(store: EmbeddingStore, rows: np.ndarray, class_map: dict[str, list[str]], scored: Optional[list[str]],
                  Y: Optional[np.ndarray], model: EtpModel, n_boot: int, seed: int) -> ZeroShotRun:
    from etp_search.evaluation import zeroshot as Z

    vecs = Z.encode_prompts(model, class_map)
    dim = next(iter(vecs.values())).shape[1]
    if dim != store.dim:
        raise StoreMismatchError(f"the prompt checkpoint embeds in {dim} dimensions but store {store.path} holds "
                                 f"{store.dim}-d vectors; pass the checkpoint the store was built with (--checkpoint)")
    ecg = store.ecg(rows)
    run = ZeroShotRun(Z.assign_counts(ecg, vecs))
    if Y is not None:  # AUC only over the classes that have ground truth
        run.report = Z.evaluate(ecg, Y, {c: vecs[c] for c in (scored or class_map)}, n_boot=n_boot, seed=seed)
    return run


def check_zeroshot_options(task: Optional[str], labels: Optional[str], prompts: str) -> None:
    """Refuse option combinations that name no classes, before any store is read."""
    from etp_search.evaluation.prompts import BUILTIN_SETS

    if task is not None and labels is not None:
        raise DataError("give either --task or --labels, not both")
    if task is None and labels is None and prompts in BUILTIN_SETS:
        raise DataError("give --task TASK, --labels \"a,b\" or --prompts FILE (classes matched to the store's label keys)")


def zeroshot_on_store(
    main: EmbeddingStore,
    *,
    task: Optional[str] = None,
    labels: Optional[str] = None,
    prompts: str = "default",
    split: Split = "test",
    baseline: Optional[EmbeddingStore] = None,
    checkpoint: Optional[str] = None,
    n_boot: int = 1000,
    seed: int = 0,
    models: Optional[PromptModels] = None,
) -> ZeroShotResult:
    """Zero-shot labelling of ``split`` of ``main`` (and the same records of ``baseline``).

    Args:
        task: a task of ``etp_search.labels`` (its rows and classes); else ``labels`` (comma-separated
            free classes) or a prompt file in ``prompts``, matched to the store's label keys.
        prompts: "default", "ensemble" or a JSON prompt file.
        checkpoint: encodes the main store's prompts (default: the store's); the baseline always
            uses its own store's checkpoint.
        models: a shared ``PromptModels`` (one is made per call otherwise).
    """
    from etp_search.evaluation.prompts import class_prompts, free_label_prompts, load_prompt_file
    from etp_search.labels import get_task

    check_zeroshot_options(task, labels, prompts)
    models = models or PromptModels()
    rows, split_note = split_rows(main, split)
    unmatched: list[str] = []
    scored: Optional[list[str]] = None
    Y: Optional[np.ndarray]  # None: no free class matched a label key (no AUC)
    if task is not None:
        t = get_task(task)
        rows, Y = task_rows(main, t, rows)
        class_map = class_prompts(t, prompts)
        title = f"zero-shot {task} ({prompts} prompts), {split_note}, {len(rows)} with {task} labels"
    else:
        class_map = free_label_prompts(labels) if labels is not None else load_prompt_file(prompts).classes
        Y, unmatched = free_class_labels(main, rows, list(class_map))
        scored = [c for c in class_map if c not in unmatched]
        title = f"zero-shot free labels, {split_note}"
    result = ZeroShotResult(task, prompts, split, split_note, len(rows), str(main.path), unmatched, title=title,
                            main=_zeroshot_run(main, rows, class_map, scored, Y, models.for_store(main, checkpoint),
                                               n_boot, seed))
    if baseline is not None:
        result.add_baseline(baseline, _zeroshot_run(baseline, aligned_rows(baseline, main, rows), class_map, scored, Y,
                                                    models.for_store(baseline), n_boot, seed))
    return result


# ---------------------------------------------------------------------------- probe

#: What the linear probe reads: the stored unit vectors, the projection before L2 (unit * the
#: stored ``ecg_norm``), or both with the choice made per probe on the validation fold.
ProbeFeatures = Literal["auto", "unit", "projection"]
PROBE_FEATURES: tuple[ProbeFeatures, ...] = ("auto", "unit", "projection")
#: The default, by the rule in benchmarks/bench_probe_features.py (inner split; results/probe_features.md).
DEFAULT_PROBE_FEATURES: ProbeFeatures = "auto"


def check_probe_features(features: str) -> None:
    """DataError in one line unless ``features`` is one of ``PROBE_FEATURES``."""
    if features not in PROBE_FEATURES:
        raise DataError(f"--features takes one of {', '.join(PROBE_FEATURES)} (got {features!r})")


def probe_features(store: EmbeddingStore, rows: np.ndarray, features: str) -> dict[str, np.ndarray]:
    """The feature sets ``features`` names for ``rows`` of ``store`` (see ``ProbeFeatures``).

    A store without finite ECG norms for these rows (indexed before the norm was stored) gives
    ``auto`` the unit vectors alone, with a warning; ``projection`` then raises DataError.
    """
    check_probe_features(features)
    unit = store.ecg(rows)
    if features == "unit":
        return {"unit": unit}
    norms = np.asarray(store.meta(NORM_COLUMN, rows), np.float32) if NORM_COLUMN in store.meta_columns else None
    if norms is None or not np.isfinite(norms).all() or not (norms > 0).all():
        why = (f"store {store.path} has no ECG norms for every record (indexed before they were stored); re-index it "
               "with `etp-search index ... --rebuild` to probe the projection")
        if features == "projection":
            raise DataError(f"{why}, or use --features unit")
        logger.warning("%s; probing the unit vectors", why)
        return {"unit": unit}
    projection = unit * norms[:, None]
    return {"projection": projection} if features == "projection" else {"unit": unit, "projection": projection}


@dataclass
class ProbeComparison(_Compared[ProbeResult]):
    task: str
    store: str
    n_records: int


def probe_on_store(main: EmbeddingStore, task: str, fractions: Sequence[float] = (1, 10, 100), seeds: int = 3,
                   baseline: Optional[EmbeddingStore] = None, progress: bool = False,
                   features: str = DEFAULT_PROBE_FEATURES) -> ProbeComparison:
    """Linear probe (train folds 1-8, L2 and ``features`` chosen on fold 9, macro AUC on fold 10) on
    ``main`` and ``baseline``."""
    from etp_search.evaluation.probe import run_probe
    from etp_search.labels import get_task

    t = get_task(task)
    if seeds < 1:
        raise DataError("--seeds must be at least 1")
    if len(main) == 0:
        raise DataError(f"store {main.path} is empty; index a dataset into it first")
    if not (folds_of(main) > 0).any():
        raise DataError(f"the linear probe needs strat_fold 1-10 (train 1-8, val 9, test 10) but store {main.path} has none; "
                        "index a dataset with folds such as PTB-XL, or use zeroshot")
    rows, Y = task_rows(main, t, np.arange(len(main)))
    folds = folds_of(main)[rows]
    result = ProbeComparison(task, str(main.path), len(rows),
                             main=run_probe(probe_features(main, rows, features), Y, folds, fractions, seeds, t.classes,
                                            progress=progress))
    if baseline is not None:
        result.add_baseline(baseline, run_probe(probe_features(baseline, aligned_rows(baseline, main, rows), features),
                                                Y, folds, fractions, seeds, t.classes, progress=progress))
    return result


# ---------------------------------------------------------------------------- retrieval

@dataclass
class RetrievalRun:
    """Recall@k both ways over one set of records (keys of the recall dicts: k)."""

    ecg_to_report: dict[int, float]
    report_to_ecg: dict[int, float]
    n_records: int
    n_unique_reports: int
    note: str

    def to_dict(self) -> dict[str, Any]:
        return {"ecg_to_report": self.ecg_to_report, "report_to_ecg": self.report_to_ecg,
                "n_records": self.n_records, "n_unique_reports": self.n_unique_reports, "note": self.note}


@dataclass
class RetrievalResult(_Compared[RetrievalRun]):
    split: Split
    split_note: str
    store: str


def retrieval_on_store(main: EmbeddingStore, split: Split = "test", baseline: Optional[EmbeddingStore] = None) -> RetrievalResult:
    """ECG -> report and report -> ECG recall@1/5/10 on ``split``; hits are records with the query's exact report text."""
    from etp_search.evaluation.retrieval import evaluate_retrieval

    rows, split_note = split_rows(main, split)
    texts = main.texts(rows)
    has_text = np.array([bool(t.strip()) for t in texts], dtype=bool)
    if len(set(t for t, h in zip(texts, has_text) if h)) < 2:
        raise DataError(f"retrieval needs records with at least 2 distinct reports; {int(has_text.sum())} of the "
                        f"{len(rows)} records of {split_note} have a report text: index a dataset with reports "
                        "(see --text-source)")
    if not has_text.all():  # an empty report is no report: not a query, not a hit
        split_note += f", {int((~has_text).sum())} without a report left out"
        rows, texts = rows[has_text], [t for t, h in zip(texts, has_text) if h]

    def run(store: EmbeddingStore, r: np.ndarray) -> RetrievalRun:
        return RetrievalRun(**evaluate_retrieval(store.ecg(r), store.text(r), texts))

    result = RetrievalResult(split, split_note, str(main.path), main=run(main, rows))
    if baseline is not None:
        result.add_baseline(baseline, run(baseline, aligned_rows(baseline, main, rows)))
    return result


__all__ = ["PromptModels", "ProbeComparison", "RetrievalResult", "RetrievalRun", "ZeroShotResult", "ZeroShotRun",
           "aligned_rows", "check_probe_features", "check_zeroshot_options", "folds_of", "free_class_labels", "load_prompt_model", "PROBE_FEATURES",
           "ProbeFeatures", "probe_features", "probe_on_store",
           "retrieval_on_store", "split_rows", "task_rows", "zeroshot_on_store"]
