"""Which ECG features a linear probe should read: the stored unit vectors or the projection before L2.

The store keeps L2-normalised ECG vectors (what cosine search needs), and ``etp-search probe``
fits on them. A probe could instead read the projection before normalisation (the unit vector
times its norm; the store would need the norm as one more column), or the unit vector plus its
log-norm as one more feature. Measured on the inner split only, with inner-split models
(trained on folds 1-6): each probe is fit on folds 1-5, its strength chosen on fold 6, and it is
scored (macro ROC-AUC) on folds 7-8, for the rhythm, superdiagnostic, form and subdiagnostic tasks.
The test fold is not read.

``auto`` is what ``etp-search probe --features auto`` does: it fits both the unit and the
projection probe and keeps the one with the higher macro AUC on the selection fold (fold 6 here,
fold 9 in ``probe``); a tie keeps ``unit``. Rule declared before this column was first measured:
``auto`` becomes ``probe``'s default if, for both models, it scores no lower than ``unit`` - 0.005
on every task and higher than ``unit`` on the mean over the four tasks; otherwise ``unit`` stays the
default and ``auto`` an option.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_probe_features.py \\
        --model resnet1d18=runs/recipes-r18-16-s1/R9/best --model resnet1d_small=runs/recipes-small-16-s1/R9/best
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _paths import portable  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
TASKS = ("rhythm", "superdiagnostic", "form", "subdiagnostic")
FEATURES = ("unit", "projection", "unit+lognorm")
COLUMNS = FEATURES + ("auto",)


@torch.no_grad()
def features(model, signals: np.ndarray) -> dict[str, np.ndarray]:
    x = torch.from_numpy(np.asarray(signals, np.float32))
    z = torch.cat([model.encode_ecg(x[i:i + 256], normalize=False) for i in range(0, len(x), 256)]).float()
    unit = torch.nn.functional.normalize(z, dim=-1)
    return {"unit": unit.numpy(), "projection": z.numpy(),
            "unit+lognorm": torch.cat([unit, z.norm(dim=-1, keepdim=True).log()], 1).numpy()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", required=True, help="NAME=CHECKPOINT trained on folds 1-6")
    ap.add_argument("--cache", type=Path, default=ROOT / "etp-data" / "ptbxl-both-100hz.h5")
    ap.add_argument("--out", type=Path, default=RESULTS / "probe_features")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from etp_search.evaluation.metrics import macro_auc
    from etp_search.evaluation.probe import fit_probe
    from etp_search.labels import get_task
    from etp_search.models import load_checkpoint
    from etp_search.signal_cache import SignalCache

    cache = SignalCache.open(args.cache)
    folds_all = np.asarray(cache.meta("strat_fold"))
    rows = np.flatnonzero(folds_all <= 8)
    f = folds_all[rows]
    labels = cache.labels()
    lab = [labels[r] for r in rows]
    x = cache.signals(rows)
    fit, sel, ev = f <= 5, f == 6, f >= 7
    out: dict = {"cache": portable(str(args.cache)), "fit_folds": [1, 2, 3, 4, 5], "select_fold": 6,
                 "eval_folds": [7, 8], "models": {}}
    for spec in args.model:
        name, path = spec.split("=", 1)
        model = load_checkpoint(path, load_text=False).eval()
        feats = features(model, x)
        res: dict = {"checkpoint": portable(str(Path(path).resolve())), "tasks": {}}
        for tname in TASKS:
            task = get_task(tname)
            y = task.matrix(lab)
            keep = ev & y.any(1)
            res["tasks"][tname] = {"n_eval": int(keep.sum())}
            val = {}
            for fname in FEATURES:
                X = feats[fname]
                pr = fit_probe(X[fit], y[fit], X[sel], y[sel])
                val[fname] = pr.val_auc
                res["tasks"][tname][fname] = float(macro_auc(y[keep], pr.decision(X[keep]))[0])
            pick = "projection" if val["projection"] > val["unit"] else "unit"
            res["tasks"][tname]["auto"] = res["tasks"][tname][pick]
            res["tasks"][tname]["auto_picked"] = pick
            res["tasks"][tname]["select_auc"] = {k: float(val[k]) for k in ("unit", "projection")}
            print(name, tname, {k: round(v, 4) for k, v in res["tasks"][tname].items() if isinstance(v, float)}, flush=True)
        out["models"][name] = res
    out["command"] = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_probe_features.py " + " ".join(sys.argv[1:])
    lines = ["# Linear-probe features: unit vectors vs the projection before L2 (inner split)", "",
             "Probe fit on folds 1-5, strength chosen on fold 6, macro ROC-AUC on folds 7-8; models trained on "
             "folds 1-6. `unit`: the stored L2-normalised vectors (what `etp-search probe` reads); `projection`: "
             "before normalisation; `unit+lognorm`: the unit vector and its log-norm; `auto`: unit or projection, "
             "whichever scores higher on fold 6 (what `probe --features auto` does, with fold 9).", "",
             "| model | task | records | " + " | ".join(COLUMNS) + " | auto picked | projection - unit | auto - unit |",
             "|---|---|---:|" + "---:|" * len(COLUMNS) + "---|---:|---:|"]
    for name, res in out["models"].items():
        for tname, r in res["tasks"].items():
            lines.append(f"| {name} | {tname} | {r['n_eval']} | " + " | ".join(f"{r[k]:.4f}" for k in COLUMNS)
                         + f" | {r['auto_picked']} | {r['projection'] - r['unit']:+.4f} | {r['auto'] - r['unit']:+.4f} |")
    verdicts = []
    for name, res in out["models"].items():
        d = [r["auto"] - r["unit"] for r in res["tasks"].values()]
        ok = min(d) >= -0.005 and float(np.mean(d)) > 0
        verdicts.append(ok)
        lines.append(f"\n{name}: auto - unit, worst task {min(d):+.4f}, mean {float(np.mean(d)):+.4f}: "
                     f"{'passes' if ok else 'fails'} the rule")
    out["auto_default"] = all(verdicts)
    lines += ["", "Rule (declared before the auto column was measured): auto becomes the default if, for every model, "
              "auto >= unit - 0.005 on every task and the mean of auto - unit over the tasks is > 0. "
              f"Verdict: **{'auto is the default' if out['auto_default'] else 'unit stays the default'}**.",
              "", f"Command: `{out['command']}`", ""]
    args.out.with_suffix(".json").write_text(json.dumps(out, indent=2) + "\n")
    args.out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
