"""Training recipes compared on the inner PTB-XL split (train folds 1-6, validate 7-8), both sources.

Each named recipe trains the same encoder / preset / schedule and is evaluated at its last epoch on
the validation folds: the query "atrial fibrillation" (AFIB ROC-AUC / AP), zero-shot macro AUC
(superdiagnostic, rhythm, form, subdiagnostic; default prompts), text->ECG AP (AFIB, LVH, IMI,
CLBBB) and a rhythm linear probe (fit on folds 1-5, strength chosen on fold 6). A random-init model
is scored beside them, and every figure is also given as a fraction of the supervised ceiling of
benchmarks/results/ceiling.json (bench_ceiling.py, same split). Runs are resumable (RUNS/<recipe>).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_recipes.py --cache etp-data/ptbxl-both-100hz.h5 \\
        --recipes R0 R4 R9 --epochs 8
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _recipe_eval import add_run_options, embed, evaluate_embeddings, figures_row  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

#: name -> (TrainConfig overrides, description)
RECIPES: dict[str, tuple[dict, str]] = {
    "R0": ({}, "today's recipe: whole report, hard CLIP targets"),
    "R1": ({"targets": "identity"}, "report, identity targets"),
    "R2": ({"targets": "jaccard"}, "report, jaccard targets"),
    "R4": ({"targets": "jaccard", "text_sampling": "statement"}, "one statement per step, jaccard targets"),
    "R5": ({"targets": "subset", "text_sampling": "statement"}, "one statement per step, subset targets"),
    "R6": ({"targets": "subset", "text_sampling": "mixed", "statement_hierarchy": True}, "mixed report/statement, subset targets, hierarchy"),
    "R8": ({"targets": "jaccard", "text_sampling": "statement", "statement_hierarchy": True}, "statement, jaccard targets, hierarchy"),
    "R9": ({"targets": "jaccard", "text_sampling": "mixed", "statement_hierarchy": True}, "mixed report/statement, jaccard targets, hierarchy"),
}
FIGURES = ("afib_query_auc", "afib_query_ap", "zs_afib", "zs_super", "zs_rhythm", "zs_form", "zs_sub", "text_to_ecg_ap", "probe_rhythm")
#: figure -> the ceiling figure it is read against
CEILING_OF = {"afib_query_auc": "afib_auc", "afib_query_ap": "afib_ap", "zs_afib": "afib_auc", "zs_super": "super_macro",
              "zs_rhythm": "rhythm_macro", "zs_form": "form_macro", "zs_sub": "sub_macro",
              "text_to_ecg_ap": "text_to_ecg_ap_mean", "probe_rhythm": "rhythm_macro"}


def folds_of(cache_path: Path) -> tuple[np.ndarray, list[dict]]:
    from etp_search.signal_cache import SignalCache

    with SignalCache.open(cache_path) as c:
        return np.asarray(c.meta("strat_fold")), c.labels()


def train_recipe(name: str, args, overrides: dict) -> Path:
    from training.augment import AugmentConfig
    from training.state import has_state
    from training.trainer import CONFIG_FILE, TrainConfig, Trainer

    run = args.runs / name
    cfg = TrainConfig(cache=str(args.cache), out=str(run), encoder=args.encoder, epochs=args.epochs, batch_size=64,
                      seed=args.seed, train_folds=args.train_folds, val_folds=args.val_folds, threads=args.threads,
                      train_fraction=args.train_fraction, augment=AugmentConfig(), **overrides)
    metrics = run / "metrics.jsonl"
    if metrics.is_file() and len(metrics.read_text().splitlines()) >= args.epochs and (run / "last").is_dir():
        logging.info("%s: finished run reused from %s", name, run)
        return run / "last"
    resume = (run / CONFIG_FILE).is_file() or has_state(run)
    Trainer(cfg, resume=resume, progress=False).run()
    return run / "last"


def evaluate(model, cache_path: Path, args) -> dict:
    from etp_search.signal_cache import SignalCache

    folds, labels = folds_of(cache_path)
    val = np.flatnonzero(np.isin(folds, args.val_folds))
    fit = np.flatnonzero(np.isin(folds, args.train_folds[:-1]))
    sel = np.flatnonzero(folds == args.train_folds[-1])
    with SignalCache.open(cache_path) as c:
        ev, ef, es = (embed(model, c.signals(r)) for r in (val, fit, sel))
    return evaluate_embeddings(model, ev, [labels[i] for i in val], ci=True,
                               probe=(ef, [labels[i] for i in fit], es, [labels[i] for i in sel]))


def markdown(doc: dict) -> str:
    ceil = doc.get("ceiling") or {}
    lines = [f"Inner split of {doc['cache']}: train folds {doc['train_folds']}, validation folds {doc['val_folds']} "
             f"({doc.get('n_val', '?')} records, {doc.get('n_val_afib', '?')} AFIB); {doc['encoder']}, {doc['epochs']} epochs, "
             "last epoch; `value (fraction of ceiling)`.", "",
             "| recipe | " + " | ".join(FIGURES) + " |", "|---|" + "---|" * len(FIGURES)]
    for name, r in doc["recipes"].items():
        cells = []
        for f in FIGURES:
            v = r["figures"].get(f)
            c = ceil.get(CEILING_OF[f])
            cells.append("" if v is None else (f"{v:.3f} ({v / c:.2f})" if c else f"{v:.3f}"))
        lines.append(f"| {name}: {r['description']} | " + " | ".join(cells) + " |")
    if ceil:
        lines.append("| supervised BCE ceiling (bench_ceiling.py) | " + " | ".join(
            f"{ceil[CEILING_OF[f]]:.3f}" if f not in ("zs_afib",) else f"{ceil['afib_auc']:.3f}" for f in FIGURES) + " |")
    lines += ["", "AFIB query average precision, 95 % bootstrap interval (1000 record resamples): " + "; ".join(
        f"{n} {r['detail']['afib']['query_ap']:.3f} [{r['detail']['afib']['query_ap_ci95'][0]:.3f}, {r['detail']['afib']['query_ap_ci95'][1]:.3f}]"
        for n, r in doc["recipes"].items() if "query_ap_ci95" in r["detail"]["afib"])]
    lines += ["", "Probe: rhythm linear probe on the ECG vectors (fit folds " + str(doc["train_folds"][:-1]) +
              f", strength on fold {doc['train_folds'][-1]}); the ceiling column for it is the BCE model's rhythm macro AUC.", "",
              "Command: `" + doc["command"] + "`"]
    return "\n".join(lines) + "\n"


RULE = ("afib_query_auc", "afib_query_ap", "zs_super", "zs_rhythm")  # the choice rule fixed before any recipe ran


def compare(specs: list[str], out: Path) -> str:
    """Side by side, from saved results: each spec is RESULT.json:RECIPE (runs of other encoders/schedules)."""
    rows, table = [], []
    for spec in specs:
        path, _, name = spec.rpartition(":")
        doc = json.loads(Path(path).read_text())
        r = doc["recipes"][name]
        rows.append((f"{name}, {doc['encoder']}, {doc['epochs']} epochs (`{Path(path).name}`)", r, doc))
    d0 = rows[0][2]
    if any((d["train_folds"], d["val_folds"], d["seed"]) != (d0["train_folds"], d0["val_folds"], d0["seed"]) for _, _, d in rows):
        raise SystemExit("--compare: the results were not run on the same split and seed; compare like with like")
    figs = FIGURES + ("rule",)
    lines = [f"Inner split: train folds {d0['train_folds']}, validation folds {d0['val_folds']} ({d0.get('n_val')} records, "
             f"{d0.get('n_val_afib')} AFIB), seed {d0['seed']}, last epoch. `rule` = mean of {', '.join(RULE)} "
             "(the choice rule fixed before any recipe ran).", "",
             "| run | " + " | ".join(figs) + " | AFIB query AP 95 % CI | train s |", "|---|" + "---|" * (len(figs) + 2)]
    for label, r, _ in rows:
        f = dict(r["figures"], rule=float(np.mean([r["figures"][k] for k in RULE])))
        ci = r["detail"]["afib"].get("query_ap_ci95")
        lines.append(f"| {label} | " + " | ".join(f"{f[k]:.3f}" for k in figs) + " | " +
                     (f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "") + " | " +
                     (f"{r['train_seconds']:.0f}" if (r.get("train_seconds") or 0) >= 1 else "not recorded") + " |")
        table.append({"run": label, "figures": f, "afib_query_ap_ci95": ci, "train_seconds": r.get("train_seconds")})
    per = [r["detail"]["zeroshot"]["rhythm/default"].get("per_class", {}) for _, r, _ in rows]
    classes = sorted(set().union(*per))
    lines += ["", "Zero-shot rhythm AUC per class (default prompts):", "", "| class | " + " | ".join(l for l, _, _ in rows) + " |",
              "|---|" + "---|" * len(rows)]
    lines += [f"| {c} | " + " | ".join("" if c not in p else f"{p[c]:.3f}" for p in per) + " |" for c in classes]
    lines += ["", "Command: `python benchmarks/bench_recipes.py --compare " + " ".join(specs) + f" --out {out}`",
              "(train s: wall seconds on the shared 2-core machine, one torch thread; not a controlled speed comparison)"]
    md = "\n".join(lines) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(md)
    out.with_suffix(".json").write_text(json.dumps({"specs": specs, "rule": RULE, "rows": table}, indent=2) + "\n")
    return md


def main() -> None:
    from etp_search.cli.common import to_jsonable

    if "--compare" in sys.argv:
        cp = argparse.ArgumentParser(description="compare saved recipe results side by side")
        cp.add_argument("--compare", nargs="+", required=True, metavar="RESULT.json:RECIPE")
        cp.add_argument("--out", type=Path, required=True)
        a = cp.parse_args()
        print(compare(a.compare, a.out))
        return

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--recipes", nargs="+", default=["R0", "R4", "R9"], choices=sorted(RECIPES))
    ap.add_argument("--random-init", action=argparse.BooleanOptionalAction, default=True)
    add_run_options(ap)
    ap.add_argument("--train-fraction", type=float, default=1.0)
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "recipes")
    ap.add_argument("--out", type=Path, default=RESULTS / "recipes")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    from etp_search.models import EtpConfig, EtpModel, EcgEncoderConfig, load_checkpoint

    folds, labels = folds_of(args.cache)
    val = np.isin(folds, args.val_folds)
    ceiling_file = RESULTS / "ceiling.json"
    ceiling = None
    if ceiling_file.is_file():
        c = json.loads(ceiling_file.read_text())
        if c.get("train_folds") == args.train_folds and c.get("val_folds") == args.val_folds:
            ceiling = c["figures"]
    doc = json.loads(args.out.with_suffix(".json").read_text()) if args.out.with_suffix(".json").is_file() else {}
    doc.update({"cache": str(args.cache), "train_folds": args.train_folds, "val_folds": args.val_folds,
                "encoder": args.encoder, "epochs": args.epochs, "seed": args.seed, "ceiling": ceiling,
                "n_val": int(val.sum()), "n_val_afib": int(sum("AFIB" in labels[i] for i in np.flatnonzero(val))),
                "command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_recipes.py " + " ".join(sys.argv[1:])})
    doc.setdefault("recipes", {})
    todo = [("random-init", None)] if args.random_init else []
    todo += [(n, RECIPES[n]) for n in args.recipes]
    for name, spec in todo:
        t0 = time.perf_counter()
        if spec is None:
            torch.manual_seed(args.seed)
            model = EtpModel(EtpConfig(ecg=EcgEncoderConfig(name=args.encoder), preset="etp-100hz", text_source="scp_en"))
            desc, train_s = "random init, untrained (same encoder)", 0.0
        else:
            ckpt = train_recipe(name, args, spec[0])
            train_s = time.perf_counter() - t0
            model, desc = load_checkpoint(ckpt), spec[1]
        r = evaluate(model, args.cache, args)
        old = doc["recipes"].get(name, {})
        doc["recipes"][name] = {"description": desc, "overrides": spec[0] if spec else {}, "figures": figures_row(r),
                                "detail": r, "train_seconds": train_s or old.get("train_seconds", 0.0)}
        logging.info("%s: %s", name, {k: round(v, 3) for k, v in figures_row(r).items()})
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(to_jsonable(doc), indent=2) + "\n")
        args.out.with_suffix(".md").write_text(markdown(doc))
    print(markdown(doc))


if __name__ == "__main__":
    main()
