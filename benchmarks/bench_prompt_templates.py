"""Prompt templates against the shipped checkpoint: zero-shot macro AUC with and without a template.

A user trial found that the README's example template ("ECG showing {}") turned rhythm zero-shot
below chance. This measures it, as a user runs it (``zeroshot --prompts FILE``, the library behind
it): for each task, a prompt file that keeps every class description (the ``default`` prompts)
and wraps it in the template, against ``default`` itself and the shipped ``ensemble`` set.

Store: indexes ../shared/data/ptbxl (1,646 WFDB records, folds 1-10) with the shipped checkpoint,
in a temporary folder, unless ``--store`` names one. Figures on fold 9 (``val``: validation, 95 %
bootstrap interval) and on all records (``all``: includes folds 1-8, on which the checkpoint was
trained, so it says how templates move scores, not how well the model generalises).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_prompt_templates.py
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _paths import portable  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
TASKS = ("rhythm", "superdiagnostic")
TEMPLATES = (["ECG showing {}"], ["{}", "ECG showing {}"], ["an electrocardiogram with {}"], ["{} on the ECG"])


def _run(store_path: Path, work: Path, split: str) -> dict:
    from etp_search.evaluation.on_store import PromptModels, zeroshot_on_store
    from etp_search.labels import get_task
    from indexing.store import EmbeddingStore

    out: dict = {}
    with EmbeddingStore.open(store_path) as s:
        models = PromptModels()
        for task in TASKS:
            t = get_task(task)
            sets: dict[str, str] = {"default (descriptions)": "default", "ensemble (shipped)": "ensemble"}
            for i, tpl in enumerate(TEMPLATES):
                f = work / f"{task}-{i}.json"
                f.write_text(json.dumps({"task": task, "templates": tpl, "classes": dict(t.description)}))
                sets[" + ".join(f'"{x}"' for x in tpl)] = str(f)
            out[task] = {}
            for name, prompts in sets.items():
                r = zeroshot_on_store(s, task=task, prompts=prompts, split=split, models=models).main.report
                assert r is not None
                out[task][name] = {"macro_auc": r.macro_auc, "ci95": [r.ci_low, r.ci_high], "n": r.n_records,
                                   "AFIB": r.per_class.get("AFIB"), "NORM": r.per_class.get("NORM")}
                print(split, task, name, round(r.macro_auc, 3), flush=True)
    return out


def main() -> None:
    from etp_search.models import default_checkpoint

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "ptbxl")
    ap.add_argument("--store", type=Path, default=None, help="a store indexed with the shipped checkpoint")
    ap.add_argument("--out", type=Path, default=RESULTS / "prompt_templates")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from etp_search.export import index_data

    doc: dict = {"checkpoint": portable(str(default_checkpoint())), "data": portable(str(args.data)), "splits": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        store = args.store
        if store is None:
            store = work / "store.h5"
            index_data(args.data, store, default_checkpoint(), batch_size=64, workers=0, progress=True)
        for split in ("val", "all"):
            doc["splits"][split] = _run(store, work, split)
    doc["command"] = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_prompt_templates.py " + " ".join(sys.argv[1:])
    lines = ["# Prompt templates and the shipped checkpoint (zero-shot macro ROC-AUC)", "",
             f"Store: `{doc['data']}` indexed with `{doc['checkpoint']}`. Each template wraps every class "
             "description (the `default` prompts); `ensemble` is the shipped set. `val` = fold 9 (95 % bootstrap "
             "interval); `all` includes folds 1-8, the checkpoint's training records.", ""]
    for task in TASKS:
        lines += [f"## {task}", "", "| prompts | fold 9 macro AUC [95 % CI] | all records | all: "
                  + ("AFIB" if task == "rhythm" else "NORM") + " AUC |", "|---|---|---:|---:|"]
        for name, v in doc["splits"]["val"][task].items():
            a = doc["splits"]["all"][task][name]
            cls = a["AFIB" if task == "rhythm" else "NORM"]
            lines.append(f"| {name} | {v['macro_auc']:.3f} [{v['ci95'][0]:.2f}, {v['ci95'][1]:.2f}] | "
                         f"{a['macro_auc']:.3f} | " + (f"{cls:.3f}" if cls is not None else "n/a") + " |")
        lines.append("")
    lines += [f"Command: `{doc['command']}`", ""]
    args.out.with_suffix(".json").write_text(json.dumps(doc, indent=2, default=float) + "\n")
    args.out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
