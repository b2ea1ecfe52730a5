"""Compare training runs by their validation figures (how the starter checkpoint was chosen).

    python benchmarks/compare_runs.py [RUN_DIR ...]   # default: benchmarks/results/train_runs/*

Reads each run's metrics.jsonl (written by `etp-search train`) and train_config.json, takes the
epoch that run's selection rule picked (lowest val_loss unless its config says otherwise), and
writes benchmarks/results/train_runs.md + .json. Only validation figures: fold 10 is never read.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def best_epoch(rows: list[dict], select: str) -> dict:
    higher = select != "val_loss"
    scored = [r for r in rows if r.get(select) is not None]
    return (max if higher else min)(scored, key=lambda r: r[select])


def main() -> None:
    runs = [Path(p) for p in sys.argv[1:]] or sorted((ROOT / "benchmarks" / "results" / "train_runs").iterdir())
    out = []
    for run in runs:
        cfg = json.loads((run / "train_config.json").read_text())
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        b = best_epoch(rows, cfg.get("select", "val_loss"))
        auc_key = next(k for k in b if k.startswith("val_zeroshot_auc_"))
        out.append({
            "run": run.name, "encoder": cfg["encoder"], "text_source": cfg["text_source"], "epochs": len(rows),
            "best_epoch": b["epoch"], "val_loss": b["val_loss"], auc_key: b[auc_key],
            "max_" + auc_key: max(r[auc_key] for r in rows),
            "val_recall@1": b["val_recall@1"], "val_recall@5": b["val_recall@5"], "val_recall@10": b["val_recall@10"],
            "train_samples_per_s_median": sorted(r["train_samples_per_s"] for r in rows)[len(rows) // 2],
        })
    res = ROOT / "benchmarks" / "results"
    (res / "train_runs.json").write_text(json.dumps(out, indent=2))
    lines = ["# Training runs compared on validation (fold 9)", "",
             "Command: `python benchmarks/compare_runs.py` over the saved `etp-search train` logs in "
             "`benchmarks/results/train_runs/` (commands: see etp_search/checkpoints/etp-ptbxl/MODEL_CARD.md).", "",
             "| run | encoder | text | best epoch | val loss | val zero-shot super AUC | max over epochs | R@1 / R@5 / R@10 | train ECG/s |",
             "|---|---|---|---:|---:|---:|---:|---|---:|"]
    for r in out:
        auc = next(k for k in r if k.startswith("val_zeroshot_auc_"))
        lines.append(f"| {r['run']} | {r['encoder']} | {r['text_source']} | {r['best_epoch']} | {r['val_loss']:.3f} | "
                     f"{r[auc]:.3f} | {r['max_' + auc]:.3f} | {r['val_recall@1']:.3f} / {r['val_recall@5']:.3f} / "
                     f"{r['val_recall@10']:.3f} | {r['train_samples_per_s_median']:.0f} |")
    (res / "train_runs.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
