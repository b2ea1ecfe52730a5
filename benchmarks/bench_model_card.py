"""Reproduce the figures of etp_search/checkpoints/etp-ptbxl/MODEL_CARD.md from the shipped checkpoint.

Zero-shot macro ROC-AUC on the PTB-XL tasks and ECG<->report recall@1/5/10 on the validation fold (9)
and the held-out test fold (10) of ../shared/data/ptbxl at 100 Hz. Writes benchmarks/results/model_card.json
and model_card.md.

    .venv/bin/python benchmarks/bench_model_card.py [--checkpoint DIR] [--cache signals.h5]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PTBXL = ROOT.parent / "shared" / "data" / "ptbxl"
TASKS = ("superdiagnostic", "subdiagnostic", "diagnostic", "form", "rhythm", "all")
SPLITS = {"val": 9, "test": 10}

log = logging.getLogger("bench_model_card")


def _cache(path: Path | None) -> Path:
    from etp_search.readers import open_dataset
    from etp_search.signal_cache import build_cache

    target = path or ROOT / "etp-data" / "signals-ptbxl-etp-100hz.h5"
    if not target.exists():
        build_cache(open_dataset(PTBXL, sampling_rate=100), target, "etp-100hz", progress=True)
    return target


@torch.no_grad()
def evaluate_checkpoint(ckpt: Path, cache_path: Path, prompt_sets=("default", "ensemble")) -> dict:
    from etp_search.evaluation.retrieval import evaluate_retrieval
    from etp_search.evaluation.zeroshot import class_prompts, encode_prompts, evaluate
    from etp_search.labels import get_task
    from etp_search.models import checkpoint_fingerprint, load_checkpoint
    from etp_search.signal_cache import SignalCache

    model = load_checkpoint(ckpt)
    cache = SignalCache.open(cache_path)
    if cache.preset.name != model.cfg.preset:
        raise SystemExit(f"cache preset {cache.preset.name} != checkpoint preset {model.cfg.preset}")
    folds = np.asarray(cache.meta("strat_fold"))
    texts_all = cache.texts(model.cfg.text_source)
    labels_all = cache.labels()
    out: dict = {"checkpoint": str(ckpt.relative_to(ROOT) if ckpt.is_relative_to(ROOT) else ckpt),
                 "fingerprint": checkpoint_fingerprint(ckpt), "text_source": model.cfg.text_source,
                 "encoder": model.cfg.ecg.name, "preset": model.cfg.preset, "splits": {}}
    prompt_vecs = {(t, ps): encode_prompts(model, class_prompts(get_task(t), ps)) for t in TASKS for ps in prompt_sets}
    for split, fold in SPLITS.items():
        rows = np.flatnonzero(folds == fold)
        x = torch.from_numpy(cache.signals(rows))
        ecg = torch.cat([model.encode_ecg(x[i:i + 256]) for i in range(0, len(x), 256)]).numpy()
        texts = [texts_all[r] for r in rows]
        uniq = list(dict.fromkeys(texts))
        uvec = model.encode_text(uniq).numpy()
        pos = {t: i for i, t in enumerate(uniq)}
        tvec = uvec[[pos[t] for t in texts]]
        res: dict = {"n_records": int(len(rows)), "retrieval": evaluate_retrieval(ecg, tvec, texts), "zeroshot": {}}
        labels = [labels_all[r] for r in rows]
        for task_name in TASKS:
            task = get_task(task_name)
            keep = np.array([task.has_labels(lab) for lab in labels])
            y = task.matrix([lab for lab, k in zip(labels, keep) if k])
            for ps in prompt_sets:
                rep = evaluate(ecg[keep], y, prompt_vecs[(task_name, ps)], n_boot=200, seed=0)
                res["zeroshot"][f"{task_name}/{ps}"] = {
                    "macro_auc": rep.macro_auc, "n": int(keep.sum()),
                    "classes_scored": int(len(task.classes) - len(rep.skipped)), "classes": len(task.classes),
                    "ci95": [rep.ci_low, rep.ci_high],
                }
        out["splits"][split] = res
    return out


def _markdown(r: dict) -> str:
    lines = [f"checkpoint `{r['checkpoint']}` (sha256 {r['fingerprint'][:16]}…), encoder {r['encoder']}, "
             f"text source {r['text_source']}, preset {r['preset']}", "",
             "| figure | validation (fold 9) | test (fold 10) |", "|---|---|---|"]
    v, t = r["splits"]["val"], r["splits"]["test"]
    lines.append(f"| records | {v['n_records']} | {t['n_records']} |")
    for key in v["zeroshot"]:
        a, b = v["zeroshot"][key], t["zeroshot"][key]
        fmt = lambda z: "n/a" if z["macro_auc"] is None or np.isnan(z["macro_auc"]) else f"{z['macro_auc']:.3f} ({z['classes_scored']}/{z['classes']} cls, n={z['n']})"  # noqa: E731
        lines.append(f"| zero-shot macro AUC {key} | {fmt(a)} | {fmt(b)} |")
    for direction in ("ecg_to_report", "report_to_ecg"):
        for k in ("1", "5", "10"):
            a = v["retrieval"][direction][int(k)] if int(k) in v["retrieval"][direction] else v["retrieval"][direction][k]
            b = t["retrieval"][direction][int(k)] if int(k) in t["retrieval"][direction] else t["retrieval"][direction][k]
            lines.append(f"| {direction.replace('_', ' ')} recall@{k} | {a:.3f} | {b:.3f} |")
    lines.append(f"| unique reports | {v['retrieval']['n_unique_reports']} | {t['retrieval']['n_unique_reports']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    from etp_search.cli.common import to_jsonable
    from etp_search.models import default_checkpoint

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=default_checkpoint())
    ap.add_argument("--cache", type=Path, default=None, help="signal cache of ../shared/data/ptbxl (etp-100hz)")
    ap.add_argument("--out", type=Path, default=RESULTS / "model_card")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.cache is None and not (PTBXL / "ptbxl_database.csv").exists():
        raise SystemExit("needs ../shared/data/ptbxl (or --cache)")
    t0 = time.perf_counter()
    r = evaluate_checkpoint(args.checkpoint.resolve(), _cache(args.cache))
    r["seconds"] = time.perf_counter() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(to_jsonable(r), indent=2) + "\n")
    md = _markdown(r)
    args.out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
