"""Reproduce the results tables on whatever data is present, trained checkpoint vs random init.

    python benchmarks/bench_results.py [--data DIR] [--checkpoint CKPT] [--work etp-data/results]
                                       [--tasks superdiagnostic,...] [--seeds 3] [--out benchmarks/results]

DATA: the shipped example data, ../shared/data/ptbxl, or a full PTB-XL / CPSC2018 download. Steps,
each through the library functions the CLI calls (so the tables are what `etp-search ... --json`
prints), in one process: each prompt model is loaded once for the whole run:
  1. `index_data` (`etp-search index DATA`) with the checkpoint (default: the shipped one) and with
     `--checkpoint random` (the random-init baseline: same architecture, untrained), timed;
  2. `zeroshot_on_store` per task on the test fold (and the validation fold), trained vs baseline;
  3. `probe_on_store` per task at 1/10/100 % of folds 1-8, N seeds (needs folds 1-10), timed;
  4. `retrieval_on_store` ECG<->report recall@1/5/10 on the test fold.
Writes benchmarks/results/results.json and results.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _paths import portable  # noqa: E402

from etp_search.cli.common import to_jsonable  # noqa: E402
from etp_search.errors import EtpError  # noqa: E402

TASKS = ["superdiagnostic", "subdiagnostic", "diagnostic", "form", "rhythm", "all"]
CPSC_TASKS = ["cpsc2018"]


def timed(what: str, fn: Callable[[], Any]) -> tuple[Any, float]:
    """Run ``fn``; return its result as JSON-ready data (what the CLI's --json prints) and the wall time."""
    t0 = time.perf_counter()
    try:
        res = fn()
    except EtpError as e:
        raise SystemExit(f"{what} failed: {e}") from None
    res = res.as_dict() if hasattr(res, "as_dict") else res.to_dict()
    return to_jsonable(res), time.perf_counter() - t0


def _fingerprint(checkpoint: str) -> str:
    """The sha256 of the weights the figures were read with, so a results file names its checkpoint exactly."""
    from etp_search.models import checkpoint_fingerprint

    path = Path(checkpoint)
    return checkpoint_fingerprint(path if path.is_absolute() else ROOT / path)


def pct(x: Any) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "ptbxl")
    ap.add_argument("--checkpoint", default=None, help="default: the shipped starter checkpoint")
    ap.add_argument("--work", type=Path, default=ROOT / "etp-data" / "results")
    ap.add_argument("--tasks", default=None, help="comma-separated; default: the six PTB-XL tasks (cpsc2018 for CPSC data)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--name", default="results", help="output file stem")
    args = ap.parse_args()
    if not args.data.exists():
        args.data = ROOT / "etp_search" / "examples" / "ptbxl"
        print(f"data not found, using the shipped example data {args.data}", file=sys.stderr)
    data = args.data.resolve()
    tag = data.name
    work = args.work / tag
    work.mkdir(parents=True, exist_ok=True)
    trained, random = work / "trained.h5", work / "random.h5"

    from etp_search.evaluation.on_store import PromptModels, probe_on_store, retrieval_on_store, zeroshot_on_store
    from etp_search.export import index_data
    from indexing.store import EmbeddingStore

    idx_trained, t_trained = timed(f"index {data}", lambda: index_data(data, trained, args.checkpoint))
    idx_random, t_random = timed(f"index {data} --checkpoint random", lambda: index_data(data, random, "random"))
    fmt = idx_trained["format"]
    tasks = args.tasks.split(",") if args.tasks else (TASKS if fmt == "ptbxl" else CPSC_TASKS)

    out: dict[str, Any] = {
        "command": "python benchmarks/bench_results.py " + " ".join(sys.argv[1:]),
        "data": str(data), "format": fmt, "records": idx_trained["rows"],
        "checkpoint": idx_trained["checkpoint"], "fingerprint": _fingerprint(idx_trained["checkpoint"]),
        "baseline": "random init, same architecture (`--checkpoint random`)",
        "index": {"trained": idx_trained, "random": idx_random,
                  "wall_s": {"trained": round(t_trained, 1), "random": round(t_random, 1)}},
        "zeroshot": {}, "probe": {}, "retrieval": {},
    }
    has_folds = fmt == "ptbxl"
    splits = ["test", "val"] if has_folds else ["all"]
    models = PromptModels()  # one prompt model per store for the whole run
    with EmbeddingStore.open(trained) as main, EmbeddingStore.open(random) as base:
        for task in tasks:
            for split in splits:
                for prompts in ("default", "ensemble"):
                    out["zeroshot"][f"{task}/{split}/{prompts}"], _ = timed(
                        f"zeroshot {task}/{split}/{prompts}",
                        lambda: zeroshot_on_store(main, task=task, prompts=prompts, split=split, baseline=base,
                                                  models=models))
        if has_folds:
            for task in tasks:
                res, dt = timed(f"probe {task}", lambda: probe_on_store(main, task, (1, 10, 100), args.seeds,
                                                                        baseline=base, progress=True))
                res["wall_s"] = round(dt, 1)
                out["probe"][task] = res
        for split in splits:
            out["retrieval"][split], _ = timed(f"retrieval {split}", lambda: retrieval_on_store(main, split, baseline=base))

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(portable(out), indent=2))
    md = render(out, tasks, splits)
    (args.out / f"{args.name}.md").write_text(md)
    print(md)


def render(out: dict[str, Any], tasks: list[str], splits: list[str]) -> str:
    n = out["records"]
    lines = [f"# Results on {out['data'].split('/')[-1]} ({out['format']}, {n} records)", "",
             f"Command: `{out['command']}`", f"Checkpoint: `{Path(out['checkpoint']).name}` (sha256 {out.get('fingerprint', '?')[:16]}…); baseline: {out['baseline']}.", ""]
    lines += ["## Zero-shot macro ROC-AUC (%), 95 % bootstrap interval", "",
              "| task | split | prompts | n | trained | 95 % CI | random init | delta |", "|---|---|---|---:|---:|---|---:|---:|"]
    for key, r in out["zeroshot"].items():
        task, split, prompts = key.split("/")
        m, b = r["main"], r.get("baseline", {})
        ci = m.get("ci95") or [None, None]
        delta = None if b.get("macro_auc") is None or m.get("macro_auc") is None else m["macro_auc"] - b["macro_auc"]
        lines.append(f"| {task} | {split} | {prompts} | {r['n_records']} | {pct(m.get('macro_auc'))} | "
                     f"{pct(ci[0])}-{pct(ci[1])} | {pct(b.get('macro_auc'))} | {pct(delta)} |")
    if out["probe"]:
        lines += ["", "## Linear probe macro ROC-AUC (%) on fold 10, mean ± std over seeds", "",
                  "| task | fraction | n train | trained | random init | delta | grid wall s |", "|---|---:|---:|---:|---:|---:|---:|"]
        for task, r in out["probe"].items():
            for i, row in enumerate(r["main"]["rows"]):
                b = r.get("baseline", {}).get("rows", [{}] * (i + 1))[i]
                d = None if b.get("auc_mean") is None else row["auc_mean"] - b["auc_mean"]
                lines.append(f"| {task} | {row['fraction_pct']} % | {row['n_train'][0]} | {pct(row['auc_mean'])} ± {pct(row['auc_std'])} | "
                             f"{pct(b.get('auc_mean'))} ± {pct(b.get('auc_std'))} | {pct(d)} | {r['wall_s'] if i == 0 else ''} |")
    lines += ["", "## Retrieval recall@k (%), a hit = any record with the query's exact report text", "",
              "| split | direction | R@1 | R@5 | R@10 | random R@1 | random R@5 | random R@10 |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for split, r in out["retrieval"].items():
        for d in ("ecg_to_report", "report_to_ecg"):
            m, b = r["main"][d], r.get("baseline", {}).get(d, {})
            lines.append(f"| {split} ({r['main']['n_records']}) | {d.replace('_to_', ' -> ')} | {pct(m['1'])} | {pct(m['5'])} | {pct(m['10'])} | "
                         f"{pct(b.get('1'))} | {pct(b.get('5'))} | {pct(b.get('10'))} |")
    ix = out["index"]
    lines += ["", f"Index wall time (`index_data`, including model load): trained {ix['wall_s']['trained']} s, random {ix['wall_s']['random']} s "
              f"for {n} records; {ix['trained'].get('records_per_s')} rec/s in the encode loop.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
