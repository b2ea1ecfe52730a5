"""Learning curve: the old and the new recipe trained on 25 / 50 / 100 % of the inner training records.

Same split, encoder, schedule and evaluation as bench_recipes.py (train folds 1-6, validate on 7-8,
last epoch); a fraction is a seeded subset, and 25 % lies inside 50 %. The 100 % runs are those of
bench_recipes.py (runs/recipes/<recipe>) when present. Writes benchmarks/results/learning_curve.{json,md}.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_learning_curve.py --cache etp-data/ptbxl-both-100hz.h5 \\
        --recipes R0 R9 --fractions 0.25 0.5 1.0
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_recipes as br  # noqa: E402
from _recipe_eval import figures_row  # noqa: E402

FIGS = ("afib_query_auc", "afib_query_ap", "zs_super", "zs_rhythm", "probe_rhythm")


def main() -> None:
    from etp_search.cli.common import to_jsonable
    from etp_search.models import load_checkpoint

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--recipes", nargs="+", default=["R0", "R9"], choices=sorted(br.RECIPES))
    ap.add_argument("--fractions", nargs="+", type=float, default=[0.25, 0.5, 1.0])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--encoder", default="resnet1d_small")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--train-folds", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 3, 4, 5, 6])
    ap.add_argument("--val-folds", type=lambda s: [int(x) for x in s.split(",")], default=[7, 8])
    ap.add_argument("--out", type=Path, default=br.RESULTS / "learning_curve")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    doc = json.loads(args.out.with_suffix(".json").read_text()) if args.out.with_suffix(".json").is_file() else {}
    doc.update({"cache": str(args.cache), "train_folds": args.train_folds, "val_folds": args.val_folds,
                "epochs": args.epochs, "encoder": args.encoder,
                "command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_learning_curve.py " + " ".join(sys.argv[1:])})
    doc.setdefault("points", {})
    for frac in args.fractions:
        for name in args.recipes:
            key = f"{name}@{frac:g}"
            done = _from_recipes(name, args) if frac == 1.0 else None
            if done is not None:  # the same run, already scored by bench_recipes.py
                doc["points"][key] = {"recipe": name, "fraction": frac, "description": br.RECIPES[name][1],
                                      "figures": done, "from": "recipes.json"}
                continue
            args.train_fraction = frac
            args.runs = br.ROOT / "runs" / ("recipes" if frac == 1.0 else f"lc{int(round(frac * 100))}")
            ckpt = br.train_recipe(name, args, br.RECIPES[name][0])
            r = br.evaluate(load_checkpoint(ckpt), args.cache, args)
            doc["points"][key] = {"recipe": name, "fraction": frac, "description": br.RECIPES[name][1], "figures": figures_row(r)}
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.with_suffix(".json").write_text(json.dumps(to_jsonable(doc), indent=2) + "\n")
            args.out.with_suffix(".md").write_text(markdown(doc))
    print(markdown(doc))


def _from_recipes(name: str, args) -> dict | None:
    """Figures of the 100 % run from recipes.json when it scored the same recipe, split and schedule."""
    f = br.RESULTS / "recipes.json"
    if not f.is_file():
        return None
    doc = json.loads(f.read_text())
    same = (doc.get("train_folds") == args.train_folds and doc.get("val_folds") == args.val_folds
            and doc.get("epochs") == args.epochs and doc.get("encoder") == args.encoder and doc.get("seed") == args.seed)
    r = doc.get("recipes", {}).get(name)
    return r["figures"] if same and r else None


def markdown(doc: dict) -> str:
    lines = [f"Learning curve on the inner split (train folds {doc['train_folds']}, validation folds {doc['val_folds']}), "
             f"{doc['encoder']}, {doc['epochs']} epochs, last epoch.", "",
             "| recipe | fraction of training records | " + " | ".join(FIGS) + " |", "|---|---|" + "---|" * len(FIGS)]
    for key, p in sorted(doc["points"].items(), key=lambda kv: (kv[1]["recipe"], kv[1]["fraction"])):
        lines.append(f"| {p['recipe']}: {p['description']} | {p['fraction']:.0%} | " +
                     " | ".join(f"{p['figures'].get(f, float('nan')):.3f}" for f in FIGS) + " |")
    lines += ["", "Command: `" + doc["command"] + "`"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
