"""`etp-search zeroshot | probe | retrieval`: evaluations on the vectors and labels of a store.

They never read raw signals. Text prompts are encoded with the checkpoint the store was built
with (its sha256 must match the store's provenance). ``--baseline-store`` (a store built by
`etp-search index DATA_DIR --checkpoint random --store B.h5`) runs the same evaluation on the
baseline's vectors and prints both side by side with a delta column. The work is done by
``etp_search.evaluation.on_store``; this module parses options and prints a table or ``--json``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from etp_search.cli.common import DEFAULT_STORE, ProgressOpt, emit, emit_json, setup_logging, user_errors
from etp_search.errors import DataError

if TYPE_CHECKING:
    from indexing.store import EmbeddingStore

logger = logging.getLogger(__name__)

StoreOpt = Annotated[Path, typer.Option("--store", help="Embedding store written by `etp-search index`.")]
BaselineOpt = Annotated[Optional[Path], typer.Option(
    "--baseline-store", help="Second store (e.g. indexed with --checkpoint random) evaluated alongside, with a delta column.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="More log output.")]
# etp_search.labels.list_tasks() order, spelled out so --help does not import pandas (a test keeps them equal).
TASK_NAMES = ("all", "diagnostic", "subdiagnostic", "superdiagnostic", "form", "rhythm", "cpsc2018")


@contextlib.contextmanager
def _stores(store: Path, baseline_store: Optional[Path]) -> Iterator[tuple[EmbeddingStore, Optional[EmbeddingStore]]]:
    """The main store and the optional baseline, open for the command and closed after it."""
    from indexing.store import EmbeddingStore

    with contextlib.ExitStack() as stack:
        main = stack.enter_context(EmbeddingStore.open(store))
        base = stack.enter_context(EmbeddingStore.open(baseline_store)) if baseline_store is not None else None
        yield main, base


def _as_given(result: dict[str, Any], store: Path, baseline_store: Optional[Path]) -> dict[str, Any]:
    """The JSON result with the store paths as the user typed them."""
    out = {**result, "store": str(store)}
    if baseline_store is not None:
        out["baseline_store"] = str(baseline_store)
    return out


def _delta(a: float, b: Optional[float]) -> Optional[float]:
    return None if b is None or a is None else a - b


def _fmt(x: Any) -> Any:
    return "" if x is None else x


# ---------------------------------------------------------------------------- zeroshot

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
    from etp_search.evaluation.on_store import check_split, check_zeroshot_options, zeroshot_on_store

    check_zeroshot_options(task, labels, prompts)
    with _stores(store, baseline_store) as (main, base):
        res = zeroshot_on_store(main, task=task, labels=labels, prompts=prompts, split=check_split(split), baseline=base,
                                checkpoint=checkpoint, n_boot=n_boot, seed=seed)
    result = _as_given(res.to_dict(), store, baseline_store)
    if json_out:
        emit_json(result)
        return
    _print_zeroshot(result, res.title)


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
    features: Annotated[str, typer.Option(help="What the probe reads: unit (the stored unit vectors), projection "
                                               "(before L2: unit x the stored norm) or auto (per probe, whichever "
                                               "scores higher on fold 9).")] = "auto",
    store: StoreOpt = DEFAULT_STORE,
    baseline_store: BaselineOpt = None,
    progress: ProgressOpt = True,
    json_out: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Linear probe on cached ECG vectors: train folds 1-8, choose L2 (and features) on fold 9, macro AUC on fold 10."""
    setup_logging(verbose)
    from etp_search.evaluation.on_store import check_probe_features, probe_on_store
    from etp_search.labels import get_task

    get_task(task)  # an unknown task or bad option fails before any store is read
    fr = _parse_fractions(fractions)
    if seeds < 1:
        raise DataError("--seeds must be at least 1")
    check_probe_features(features)
    with _stores(store, baseline_store) as (main, base):
        res = probe_on_store(main, task, fr, seeds, baseline=base, progress=progress, features=features)
    result = _as_given(res.to_dict(), store, baseline_store)
    if json_out:
        emit_json(result)
        return
    out = []
    for i, row in enumerate(result["main"]["rows"]):
        r = {"fraction_%": row["fraction_pct"], "n_train": row["n_train"][0], "auc_mean": row["auc_mean"],
             "auc_std": row["auc_std"], "lambda": row["lambda"], "features": "/".join(dict.fromkeys(row["features"]))}
        if "baseline" in result:
            b = result["baseline"]["rows"][i]
            r.update(baseline_mean=b["auc_mean"], baseline_std=b["auc_std"], delta=_delta(row["auc_mean"], b["auc_mean"]))
        out.append(r)
    emit(out, False, title=f"linear probe {task}: macro AUC on fold 10 ({res.main.n_test} records), {seeds} seed(s)")
    if res.main.skipped:
        typer.echo(f"skipped in the test fold (no positives or negatives): {', '.join(res.main.skipped)}")


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
    from etp_search.evaluation.on_store import check_split, retrieval_on_store

    with _stores(store, baseline_store) as (main, base):
        res = retrieval_on_store(main, check_split(split), baseline=base)
    result = _as_given(res.to_dict(), store, baseline_store)
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
    emit(out, False, title=f"retrieval, {res.split_note}, {m['n_unique_reports']} unique reports")
    typer.echo(f"note: {m['note']}")
