"""`etp-search zeroshot | probe | retrieval`: evaluations on the vectors and labels of a store.

They never read raw signals. Text prompts are encoded with the checkpoint the store was built
with (its sha256 must match the store's provenance). ``--baseline-store`` (a store built by
`etp-search index DATA_DIR --checkpoint random --store B.h5`) runs the same evaluation on the
baseline's vectors and prints both side by side with a delta column.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
import typer

from etp_search.cli.common import DEFAULT_STORE, emit, emit_json, setup_logging, user_errors
from etp_search.errors import DataError, StoreMismatchError

logger = logging.getLogger(__name__)

SPLITS = {"test": 10, "val": 9}

StoreOpt = Annotated[Path, typer.Option("--store", help="Embedding store written by `etp-search index`.")]
BaselineOpt = Annotated[Optional[Path], typer.Option(
    "--baseline-store", help="Second store (e.g. indexed with --checkpoint random) evaluated alongside, with a delta column.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="More log output.")]
# etp_search.labels.list_tasks() order, spelled out so --help does not import pandas (a test keeps them equal).
TASK_NAMES = ("all", "diagnostic", "subdiagnostic", "superdiagnostic", "form", "rhythm", "cpsc2018")


# ---------------------------------------------------------------------------- store helpers

def _open(path: Path) -> Any:
    from indexing.store import EmbeddingStore

    return EmbeddingStore.open(path)


def _folds(store: Any) -> np.ndarray:
    return np.asarray(store.meta("strat_fold"), dtype=np.int64)


def split_rows(store: Any, split: str) -> tuple[np.ndarray, str]:
    """Rows of ``split`` ("test" = fold 10, "val" = fold 9, "all"); all rows when the store has no folds."""
    if split not in (*SPLITS, "all"):
        raise DataError(f"unknown split '{split}'; use test, val or all")
    n = len(store)
    if n == 0:
        raise DataError(f"store {store.path} is empty; index a dataset into it first")
    folds = _folds(store)
    if split == "all":
        return np.arange(n), f"all {n} records"
    if not (folds > 0).any():
        return np.arange(n), f"all {n} records (the store has no strat_fold, so no {split} split)"
    rows = np.flatnonzero(folds == SPLITS[split])
    if not len(rows):
        raise DataError(f"store {store.path} has no records in strat_fold {SPLITS[split]} ({split}); pass --split all")
    return rows, f"{split} split (strat_fold {SPLITS[split]}): {len(rows)} records"


def task_rows(store: Any, task: Any, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows that carry a label of ``task`` (others drop out, as in Strodthoff et al.) and their (N, C) matrix."""
    labels = store.labels(rows)
    keep = np.array([task.has_labels(lab) for lab in labels], dtype=bool)
    if not keep.any():
        keys = sorted({k for lab in labels for k in lab})[:8]
        seen = f"label keys seen: {', '.join(keys)}" if keys else "the records carry no labels"
        raise DataError(f"store {store.path} holds no labels for task '{task.name}' ({seen}); "
                        f"pick a task of the indexed dataset or index one labelled for it")
    return rows[keep], task.matrix([lab for lab, k in zip(labels, keep) if k])


def _aligned_rows(base: Any, main: Any, rows: np.ndarray) -> np.ndarray:
    """The baseline store's rows for the same record ids as ``rows`` of the main store."""
    ids = main.ids_at(rows)
    have = base.contains(ids)
    if not have.all():
        raise DataError(f"baseline store {base.path} lacks {int((~have).sum())} of the {len(ids)} evaluated records; "
                        "index the same dataset into it")
    return np.asarray(base.rows_of(ids))


def _prompt_model(store: Any, checkpoint: Optional[str]) -> Any:
    # Searcher resolves the store's checkpoint and refuses one whose sha256 differs from the store's
    from etp_search.search import Searcher

    return Searcher(store, checkpoint=checkpoint).model


def _delta(a: float, b: Optional[float]) -> Optional[float]:
    return None if b is None or a is None else a - b


def _fmt(x: Any) -> Any:
    return "" if x is None else x


# ---------------------------------------------------------------------------- zeroshot

def _zeroshot_one(store: Any, rows: np.ndarray, prompts: dict[str, list[str]], Y: Optional[np.ndarray],
                  checkpoint: Optional[str], n_boot: int, seed: int) -> dict[str, Any]:
    from etp_search.evaluation import zeroshot as Z

    model = _prompt_model(store, checkpoint)
    vecs = Z.encode_prompts(model, prompts)
    dim = next(iter(vecs.values())).shape[1]
    if dim != store.dim:
        raise StoreMismatchError(f"the prompt checkpoint embeds in {dim} dimensions but store {store.path} holds "
                                 f"{store.dim}-d vectors; pass the checkpoint the store was built with (--checkpoint)")
    ecg = store.ecg(rows)
    out: dict[str, Any] = {"assigned": Z.assign_counts(ecg, vecs)}
    if Y is not None:
        out["report"] = Z.evaluate(ecg, Y, vecs, n_boot=n_boot, seed=seed)
    return out


def _free_classes(store: Any, rows: np.ndarray, prompts: dict[str, list[str]]) -> tuple[dict, np.ndarray | None, list]:
    """Match free classes to stored label keys; keep those with ground truth for AUC."""
    from etp_search.evaluation.prompts import match_label_keys
    from etp_search.labels import get_task

    labels = store.labels(rows)
    keys = {k for lab in labels for k in lab}
    desc: dict[str, list[str]] = {}
    for name in ("all", "cpsc2018"):  # SCP statements and CPSC classes share some codes (NORM, PAC, PVC)
        for key, text in get_task(name).description.items():
            desc.setdefault(key, []).append(text)
    match = match_label_keys(list(prompts), keys, desc)
    matched = {c: k for c, k in match.items() if k is not None}
    unmatched = [c for c, k in match.items() if k is None]
    if not matched:
        return match, None, unmatched
    Y = np.array([[1.0 if matched[c] in lab else 0.0 for c in matched] for lab in labels], dtype=np.float32)
    return match, Y, unmatched


@user_errors
def zeroshot(
    task: Annotated[Optional[str], typer.Option("--task", help=f"Task: {', '.join(TASK_NAMES)}.")] = None,
    labels: Annotated[Optional[str], typer.Option("--labels", help='Free classes instead of a task, e.g. "atrial fibrillation,sinus rhythm".')] = None,
    prompts: Annotated[str, typer.Option("--prompts", help="default (class descriptions), ensemble (hand-written phrasings) or a JSON prompt file.")] = "default",
    store: StoreOpt = DEFAULT_STORE,
    baseline_store: BaselineOpt = None,
    checkpoint: Annotated[Optional[str], typer.Option(help="Checkpoint that encodes the prompts; default: the store's.")] = None,
    split: Annotated[str, typer.Option(help="test (fold 10), val (fold 9) or all.")] = "test",
    n_boot: Annotated[int, typer.Option("--n-boot", help="Bootstrap resamples for the 95% interval (0: none; at most 100000).", min=0, max=100_000)] = 1000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Zero-shot labelling: cosine(ECG, class prompt embedding); macro ROC-AUC with a bootstrap 95% CI."""
    setup_logging(verbose)
    from etp_search.evaluation.prompts import BUILTIN_SETS, class_prompts, free_label_prompts, load_prompt_file
    from etp_search.labels import get_task

    if task is not None and labels is not None:
        raise DataError("give either --task or --labels, not both")
    if task is None and labels is None and prompts in BUILTIN_SETS:
        raise DataError("give --task TASK, --labels \"a,b\" or --prompts FILE (classes matched to the store's label keys)")
    main = _open(store)
    rows, split_note = split_rows(main, split)
    unmatched: list[str] = []
    if task is not None:
        t = get_task(task)
        rows, Y = task_rows(main, t, rows)
        class_map = class_prompts(t, prompts)
        title = f"zero-shot {task} ({prompts} prompts), {split_note}, {len(rows)} with {task} labels"
    else:
        class_map = free_label_prompts(labels) if labels is not None else load_prompt_file(prompts).classes
        _, Y, unmatched = _free_classes(main, rows, class_map)
        if Y is not None:  # AUC only over classes that have ground truth
            matched = [c for c in class_map if c not in unmatched]
            scored = {c: class_map[c] for c in matched}
        title = f"zero-shot free labels, {split_note}"
    result = {"task": task, "prompts": prompts, "split": split, "split_note": split_note, "n_records": len(rows),
              "store": str(store), "no_ground_truth": unmatched}
    runs = {"main": (main, rows, checkpoint)}
    if baseline_store is not None:
        base = _open(baseline_store)
        runs["baseline"] = (base, _aligned_rows(base, main, rows), None)
        result["baseline_store"] = str(baseline_store)
    for name, (st, r, ck) in runs.items():
        if task is None and Y is not None:
            out = _zeroshot_one(st, r, scored, Y, ck, n_boot, seed)
            out["assigned"] = _zeroshot_one(st, r, class_map, None, ck, 0, seed)["assigned"]
        else:
            out = _zeroshot_one(st, r, class_map, Y, ck, n_boot, seed)
        result[name] = {"assigned": out["assigned"], **(out["report"].to_dict() if "report" in out else {})}
    if json_out:
        emit_json(result)
        return
    _print_zeroshot(result, title)


def _print_zeroshot(result: dict[str, Any], title: str) -> None:
    main, base = result["main"], result.get("baseline")
    rows = []
    if "macro_auc" in main:
        classes = list(main["per_class"])
        first = {"class": "MACRO", "auc": main["macro_auc"], "ci95": main["ci95"]}
        if base:
            first.update(baseline=base["macro_auc"], delta=_delta(main["macro_auc"], base["macro_auc"]))
        rows.append(first)
        for c in classes:
            row = {"class": c, "auc": main["per_class"][c], "ci95": "", "n_top1": main["assigned"].get(c, 0)}
            if base:
                row.update(baseline=base["per_class"][c], delta=_delta(main["per_class"][c], base["per_class"][c]))
            rows.append(row)
    for c in result["no_ground_truth"]:
        rows.append({"class": c, "auc": "no ground truth", "n_top1": main["assigned"].get(c, 0)})
    columns = ["class", "auc", "ci95", "n_top1"] + (["baseline", "delta"] if base else [])
    emit([{k: _fmt(r.get(k)) for k in columns} for r in rows], False, columns, title=title)
    if main.get("skipped"):
        typer.echo(f"skipped (no positives or no negatives in this split): {', '.join(main['skipped'])}")


# ---------------------------------------------------------------------------- probe

def _parse_fractions(text: str) -> list[float]:
    try:
        out = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        out = []
    if not out or any(not 0 < f <= 100 for f in out):
        raise DataError(f"--fractions takes percentages in (0, 100] separated by commas, e.g. 1,10,100 (got {text!r})")
    return [int(f) if f == int(f) else f for f in out]


@user_errors
def probe(
    task: Annotated[str, typer.Option("--task", help=f"Task: {', '.join(TASK_NAMES)}.")],
    fractions: Annotated[str, typer.Option(help="Training fractions in percent of folds 1-8.")] = "1,10,100",
    seeds: Annotated[int, typer.Option(help="Seeds per fraction (mean and std are reported).")] = 3,
    store: StoreOpt = DEFAULT_STORE,
    baseline_store: BaselineOpt = None,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Linear probe on cached ECG vectors: train folds 1-8, choose L2 on fold 9, macro AUC on fold 10."""
    setup_logging(verbose)
    from etp_search.evaluation.probe import run_probe
    from etp_search.labels import get_task

    t = get_task(task)
    fr = _parse_fractions(fractions)
    if seeds < 1:
        raise DataError("--seeds must be at least 1")
    main = _open(store)
    if len(main) == 0:
        raise DataError(f"store {store} is empty; index a dataset into it first")
    if not (_folds(main) > 0).any():
        raise DataError(f"the linear probe needs strat_fold 1-10 (train 1-8, val 9, test 10) but store {store} has none; "
                        "index a dataset with folds such as PTB-XL, or use zeroshot")
    rows, Y = task_rows(main, t, np.arange(len(main)))
    folds = _folds(main)[rows]
    result: dict[str, Any] = {"task": task, "store": str(store), "n_records": len(rows)}
    res = run_probe(main.ecg(rows), Y, folds, fr, seeds, t.classes, progress=True)
    result["main"] = res.to_dict()
    if baseline_store is not None:
        base = _open(baseline_store)
        bres = run_probe(base.ecg(_aligned_rows(base, main, rows)), Y, folds, fr, seeds, t.classes, progress=True)
        result["baseline"] = bres.to_dict()
        result["baseline_store"] = str(baseline_store)
    if json_out:
        emit_json(result)
        return
    out = []
    for i, row in enumerate(result["main"]["rows"]):
        r = {"fraction_%": row["fraction_pct"], "n_train": row["n_train"][0], "auc_mean": row["auc_mean"],
             "auc_std": row["auc_std"], "lambda": row["lambda"]}
        if "baseline" in result:
            b = result["baseline"]["rows"][i]
            r.update(baseline_mean=b["auc_mean"], baseline_std=b["auc_std"], delta=_delta(row["auc_mean"], b["auc_mean"]))
        out.append(r)
    emit(out, False, title=f"linear probe {task}: macro AUC on fold 10 ({res.n_test} records), {seeds} seed(s)")
    if res.skipped:
        typer.echo(f"skipped in the test fold (no positives or negatives): {', '.join(res.skipped)}")


# ---------------------------------------------------------------------------- retrieval

@user_errors
def retrieval(
    split: Annotated[str, typer.Option(help="test (fold 10), val (fold 9) or all.")] = "test",
    store: StoreOpt = DEFAULT_STORE,
    baseline_store: BaselineOpt = None,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """ECG -> report and report -> ECG recall@1/5/10; any record with the query's exact report text is a hit."""
    setup_logging(verbose)
    from etp_search.evaluation.retrieval import evaluate_retrieval

    main = _open(store)
    rows, split_note = split_rows(main, split)
    result: dict[str, Any] = {"split": split, "split_note": split_note, "store": str(store)}
    runs = {"main": (main, rows)}
    if baseline_store is not None:
        base = _open(baseline_store)
        runs["baseline"] = (base, _aligned_rows(base, main, rows))
        result["baseline_store"] = str(baseline_store)
    texts = main.texts(rows)
    for name, (st, r) in runs.items():
        result[name] = evaluate_retrieval(st.ecg(r), st.text(r), texts)
    if json_out:
        emit_json(result)
        return
    out = []
    for direction in ("ecg_to_report", "report_to_ecg"):
        for k, v in result["main"][direction].items():
            r = {"direction": direction.replace("_to_", " -> "), "k": k, "recall": v}
            if "baseline" in result:
                b = result["baseline"][direction][k]
                r.update(baseline=b, delta=_delta(v, b))
            out.append(r)
    m = result["main"]
    emit(out, False, title=f"retrieval, {split_note}, {m['n_unique_reports']} unique reports")
    typer.echo(f"note: {m['note']}")
