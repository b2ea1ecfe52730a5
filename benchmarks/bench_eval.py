"""Linear-probe grid timing: 4 PTB-XL tasks x 3 fractions x 3 seeds on 21,837 x 256 vectors.

Labels are real (ptbxl_database.csv through etp_search.labels, every task exactly as in the
benchmark); the vectors are synthetic (a weak direction per SCP statement plus noise, so the
probe AUCs land in a realistic 0.8-0.95 range) because timing depends only on shapes.

Baseline, measured in the same run on the same cells: scikit-learn's LogisticRegression (lbfgs),
one model per class, warm-started along the same L2 path (C = 1 / (lam * n)) with the same
early stop on validation macro AUC — i.e. the same protocol done the usual way. Medians over
repeats; ratios are baseline / ours.

    .venv/bin/python benchmarks/bench_eval.py [--repeats 3] [--data ../shared/data/ptbxl]

Writes benchmarks/results/eval.json and eval.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from etp_search.evaluation.metrics import macro_auc  # noqa: E402
from etp_search.evaluation.probe import ProbeConfig, fit_probe, run_probe, stratified_subsample  # noqa: E402
from etp_search.labels import get_task  # noqa: E402
from etp_search.text import parse_scp_codes  # noqa: E402

TASKS = ("superdiagnostic", "subdiagnostic", "form", "rhythm")
FRACTIONS = (1, 10, 100)
SEEDS = 3
DIM = 256
#: Cells (task, fraction %) also timed with the scikit-learn baseline (one seed each).
BASELINE_CELLS = (("superdiagnostic", 100), ("rhythm", 100), ("subdiagnostic", 10))


def load(data: Path) -> tuple[list[dict], np.ndarray]:
    df = pd.read_csv(data / "ptbxl_database.csv", usecols=["scp_codes", "strat_fold"])
    return [parse_scp_codes(s) for s in df["scp_codes"]], df["strat_fold"].to_numpy()


def synthetic_vectors(codes: list[dict], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    Y = get_task("all").matrix(codes)
    X = rng.normal(size=(len(codes), DIM)) + 0.15 * Y @ rng.normal(size=(Y.shape[1], DIM))
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


def task_arrays(task_name: str, codes: list[dict], folds: np.ndarray, X: np.ndarray):
    task = get_task(task_name)
    keep = np.array([task.has_labels(c) for c in codes])
    return task, X[keep], task.matrix([c for c, k in zip(codes, keep) if k]), folds[keep]


def sklearn_fit_select(Xtr, Ytr, Xva, Yva, config: ProbeConfig):
    """The usual way: one sklearn LogisticRegression per class, warm-started along the same path."""
    from sklearn.linear_model import LogisticRegression

    mean, std = Xtr.mean(0), Xtr.std(0) + 1e-6
    Xtr, Xva = (Xtr - mean) / std, (Xva - mean) / std
    models = [LogisticRegression(warm_start=True, max_iter=config.max_iter, tol=1e-4) for _ in range(Ytr.shape[1])]
    val, coefs = [], []
    for lam in config.lambdas:
        W = np.zeros((Xtr.shape[1], Ytr.shape[1]), np.float32)
        b = np.zeros(Ytr.shape[1], np.float32)
        for c, m in enumerate(models):
            y = Ytr[:, c] > 0
            if y.all() or not y.any():
                continue
            m.set_params(C=1.0 / (lam * len(Xtr)))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                m.fit(Xtr, y)
            W[:, c], b[c] = m.coef_[0], m.intercept_[0]
        val.append(macro_auc(Yva, Xva @ W + b)[0])
        coefs.append((W, b))
        best = np.nanmax(val)
        if len(val) > config.patience and all(v < best for v in val[-config.patience:]):
            break
    i = int(np.nanargmax(val))
    return config.lambdas[i], coefs[i], (mean, std)


def time_grid(arrays, repeats: int) -> tuple[list[float], dict]:
    times, results = [], {}
    for _ in range(repeats):
        t0 = time.perf_counter()
        for name, (task, X, Y, folds) in arrays.items():
            res = run_probe(X, Y, folds, FRACTIONS, SEEDS, task.classes)
            results[name] = [{k: r[k] for k in ("fraction_pct", "auc_mean", "auc_std", "lambda", "n_train")}
                             for r in res.rows]
        times.append(time.perf_counter() - t0)
    return times, results


def time_cell(task_name, fraction, arrays, repeats, config=ProbeConfig()):
    import torch

    task, X, Y, folds = arrays[task_name]
    train = np.flatnonzero(folds <= 8)
    val, test = folds == 9, folds == 10
    local = stratified_subsample(Y[train], fraction / 100, 0)
    Xtr, Ytr = X[train[local]], Y[train[local]]
    ours, base = [], []
    for _ in range(repeats):
        before = torch.get_num_threads()
        torch.set_num_threads(config.threads)
        t0 = time.perf_counter()
        probe = fit_probe(Xtr, Ytr, X[val], Y[val], config)
        ours.append(time.perf_counter() - t0)
        torch.set_num_threads(before)
        t0 = time.perf_counter()
        lam, (W, b), (mean, std) = sklearn_fit_select(Xtr, Ytr, X[val], Y[val], config)
        base.append(time.perf_counter() - t0)
    ours_auc = macro_auc(Y[test], probe.decision(X[test]))[0]
    base_auc = macro_auc(Y[test], ((X[test] - mean) / std) @ W + b)[0]
    return {
        "task": task_name, "fraction_pct": fraction, "n_train": int(len(Xtr)), "classes": len(task.classes),
        "ours_s": statistics.median(ours), "sklearn_s": statistics.median(base),
        "ratio": statistics.median(base) / statistics.median(ours),
        "ours_lambda": probe.lam, "sklearn_lambda": lam, "ours_test_auc": float(ours_auc), "sklearn_test_auc": float(base_auc),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "ptbxl")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    if not (args.data / "ptbxl_database.csv").exists():
        sys.exit(f"error: {args.data}/ptbxl_database.csv not found; pass --data PTBXL_DIR")
    codes, folds = load(args.data)
    X = synthetic_vectors(codes)
    arrays = {t: task_arrays(t, codes, folds, X) for t in TASKS}
    print(f"{len(codes)} records x {DIM}; tasks: " + ", ".join(f"{t} {len(a[0].classes)} cls/{len(a[1])} rec"
                                                            for t, a in arrays.items()), file=sys.stderr)
    grid_times, grid_results = time_grid(arrays, args.repeats)
    print(f"grid: {[round(t, 2) for t in grid_times]} s", file=sys.stderr)
    cells = [time_cell(t, f, arrays, args.repeats) for t, f in BASELINE_CELLS]
    for c in cells:
        print(f"cell {c['task']} {c['fraction_pct']}%: ours {c['ours_s']:.2f}s sklearn {c['sklearn_s']:.2f}s "
              f"x{c['ratio']:.1f}", file=sys.stderr)
    load_avg = os.getloadavg()
    out = {
        "benchmark": "linear-probe grid (4 PTB-XL tasks x fractions 1/10/100 % x 3 seeds), 21,837 x 256 vectors",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_avg_at_end": [round(x, 2) for x in load_avg]},
        "protocol": "train folds 1-8 (stratified fraction, every class kept), L2 chosen on fold 9, macro AUC on fold 10; "
                    "labels real (ptbxl_database.csv), vectors synthetic",
        "config": ProbeConfig().to_dict(),
        "repeats": args.repeats,
        "grid_seconds_median": statistics.median(grid_times),
        "grid_seconds_all": grid_times,
        "grid_fits": len(TASKS) * len(FRACTIONS) * SEEDS,
        "grid_results": grid_results,
        "baseline": "scikit-learn LogisticRegression (lbfgs, tol 1e-4), one per class, warm-started along the same "
                    "lambda path with the same early stop, seed 0",
        "cells": cells,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "eval.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [
        "# Linear-probe grid timing (benchmarks/bench_eval.py)",
        "",
        f"Grid: {len(TASKS)} tasks x {len(FRACTIONS)} fractions x {SEEDS} seeds = {out['grid_fits']} probe results "
        f"(100 % fits once per task: deterministic) on 21,837 x {DIM} vectors; {os.cpu_count()} CPUs, "
        f"load average at end {load_avg[0]:.1f}.",
        "",
        f"**Whole grid: median {out['grid_seconds_median']:.1f} s** over {args.repeats} repeats "
        f"({', '.join(f'{t:.1f}' for t in grid_times)} s).",
        "",
        "Same cell (seed 0), ours vs scikit-learn LogisticRegression per class along the same warm-started path:",
        "",
        "| task | fraction | n_train | classes | ours s | sklearn s | sklearn/ours | test AUC ours | test AUC sklearn |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        lines.append(f"| {c['task']} | {c['fraction_pct']} % | {c['n_train']} | {c['classes']} | {c['ours_s']:.2f} | "
                     f"{c['sklearn_s']:.2f} | {c['ratio']:.1f}x | {c['ours_test_auc']:.4f} | {c['sklearn_test_auc']:.4f} |")
    lines += ["", "Probe results on the synthetic vectors (macro AUC on fold 10, mean ± std over seeds):", "",
              "| task | 1 % | 10 % | 100 % |", "|---|---|---|---|"]
    for t, rows in grid_results.items():
        lines.append(f"| {t} | " + " | ".join(f"{r['auc_mean']:.3f} ± {r['auc_std']:.3f}" for r in rows) + " |")
    (args.out / "eval.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
