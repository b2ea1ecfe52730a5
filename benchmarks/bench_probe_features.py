"""Which ECG features a linear probe should read: the stored unit vectors or the projection before L2.

The store keeps L2-normalised ECG vectors (what cosine search needs), and ``etp-search probe``
fits on them. A probe could instead read the projection before normalisation (the unit vector
times its norm; the store would need the norm as one more column), or the unit vector plus its
log-norm as one more feature. Measured on the inner split only, with inner-split models
(trained on folds 1-6): each probe is fit on folds 1-5, its strength chosen on fold 6, and it is
scored (macro ROC-AUC) on folds 7-8, for the rhythm, superdiagnostic, form and subdiagnostic tasks.
The test fold is not read.

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
            for fname in FEATURES:
                X = feats[fname]
                pr = fit_probe(X[fit], y[fit], X[sel], y[sel])
                res["tasks"][tname][fname] = float(macro_auc(y[keep], pr.decision(X[keep]))[0])
            print(name, tname, {k: round(v, 4) for k, v in res["tasks"][tname].items() if k != "n_eval"}, flush=True)
        out["models"][name] = res
    out["command"] = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_probe_features.py " + " ".join(sys.argv[1:])
    args.out.with_suffix(".json").write_text(json.dumps(out, indent=2) + "\n")
    lines = ["# Linear-probe features: unit vectors vs the projection before L2 (inner split)", "",
             "Probe fit on folds 1-5, strength chosen on fold 6, macro ROC-AUC on folds 7-8; models trained on "
             "folds 1-6. `unit`: the stored L2-normalised vectors (what `etp-search probe` reads); `projection`: "
             "before normalisation; `unit+lognorm`: the unit vector and its log-norm.", "",
             "| model | task | records | " + " | ".join(FEATURES) + " | projection - unit |",
             "|---|---|---:|" + "---:|" * (len(FEATURES) + 1)]
    for name, res in out["models"].items():
        for tname, r in res["tasks"].items():
            lines.append(f"| {name} | {tname} | {r['n_eval']} | " + " | ".join(f"{r[k]:.4f}" for k in FEATURES)
                         + f" | {r['projection'] - r['unit']:+.4f} |")
    lines += ["", f"Command: `{out['command']}`", ""]
    args.out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
