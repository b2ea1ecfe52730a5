"""Supervised ceiling: the same ECG encoder and preset trained with multi-label BCE on PTB-XL labels.

Same records, folds, augmentation, batch size, optimiser and schedule as the contrastive recipes
(bench_recipes.py): targets are the 71 SCP statements plus the 5 superdiagnostic classes of each
training record; evaluated on the validation folds as per-class ROC-AUC (and AP for the statements
the text->ECG figure uses). Writes benchmarks/results/ceiling.{json,md}. A random-init encoder with
an untrained head is scored beside it.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_ceiling.py --cache etp-data/ptbxl-both-100hz.h5 --epochs 8
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
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _recipe_eval import RETRIEVAL_CODES, add_run_options, average_precision, bootstrap  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
log = logging.getLogger("bench_ceiling")


class Supervised(nn.Module):
    def __init__(self, encoder: str, n_out: int) -> None:
        super().__init__()
        from etp_search.models import create_ecg_encoder

        self.encoder = create_ecg_encoder(encoder)
        self.head = nn.Linear(self.encoder.out_dim, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def targets(labels: list[dict]) -> tuple[np.ndarray, list[str]]:
    from etp_search.labels import get_task

    st, sup = get_task("all"), get_task("superdiagnostic")
    y = np.concatenate([st.matrix(labels), sup.matrix(labels)], axis=1)
    return y, [*st.classes, *(f"super:{c}" for c in sup.classes)]


def train(model: Supervised, x: np.ndarray, y: np.ndarray, epochs: int, seed: int) -> float:
    from training.augment import AugmentConfig, augment, step_generator
    from training.trainer import TrainConfig, lr_at, param_groups

    cfg = TrainConfig(epochs=epochs, seed=seed)
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    bs = cfg.batch_size
    per_epoch = len(x) // bs
    total, step = epochs * per_epoch, 0
    loss_fn = nn.BCEWithLogitsLoss()
    t0 = time.perf_counter()
    for epoch in range(epochs):
        order = np.random.default_rng([seed, epoch]).permutation(len(x))
        model.train()
        run = 0.0
        for b in range(per_epoch):
            idx = order[b * bs:(b + 1) * bs]
            xb = augment(torch.from_numpy(x[idx]), cfg.augment, step_generator(seed, step, 0))
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total, cfg)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), torch.from_numpy(y[idx]))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            run += float(loss.detach())
            step += 1
        log.info("epoch %d/%d: BCE %.4f, %.1f ECG/s", epoch + 1, epochs, run / per_epoch,
                 step * bs / (time.perf_counter() - t0))
    return time.perf_counter() - t0


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray) -> np.ndarray:
    model.eval()
    t = torch.from_numpy(x)
    return torch.cat([model(t[i:i + 256]) for i in range(0, len(t), 256)]).numpy()


def figures(scores: np.ndarray, labels: list[dict], names: list[str], ci: bool = False) -> dict:
    from etp_search.evaluation.metrics import macro_auc, roc_auc
    from etp_search.labels import get_task

    col = {n: i for i, n in enumerate(names)}
    out: dict = {}
    for tname, key in (("superdiagnostic", "super_macro"), ("rhythm", "rhythm_macro"), ("form", "form_macro")):
        task = get_task(tname)
        keep = np.array([task.has_labels(lab) for lab in labels])
        y = task.matrix([lab for lab, k in zip(labels, keep) if k])
        cols = [col[("super:" + c) if tname == "superdiagnostic" else c] for c in task.classes]
        m, per, _ = macro_auc(y, scores[keep][:, cols])
        out[key] = float(m)
        if tname == "rhythm":
            out["rhythm_per_class"] = {c: float(a) for c, a in zip(task.classes, per) if y[:, task.classes.index(c)].sum()}
    # subdiagnostic from the statement logits: a subclass scores the max of its statements' logits
    task = get_task("subdiagnostic")
    keep = np.array([task.has_labels(lab) for lab in labels])
    y = task.matrix([lab for lab, k in zip(labels, keep) if k])
    sub = np.stack([scores[keep][:, [col[code] for code, cl in task.mapping.items() if cl[0] == c]].max(1)
                    for c in task.classes], 1)
    out["sub_macro"] = float(macro_auc(y, sub)[0])
    y_af = np.array(["AFIB" in lab for lab in labels])
    s_af = scores[:, col["AFIB"]]
    out["afib_auc"], out["afib_ap"] = roc_auc(y_af, s_af), average_precision(y_af, s_af)
    if ci:
        out["afib_ap_ci95"] = bootstrap(y_af, s_af, average_precision)
        out["afib_auc_ci95"] = bootstrap(y_af, s_af, roc_auc)
    aps = {c: average_precision(np.array([c in lab for lab in labels]), scores[:, col[c]]) for c in RETRIEVAL_CODES}
    out["text_to_ecg_ap"] = aps
    out["text_to_ecg_ap_mean"] = float(np.nanmean(list(aps.values())))
    return out


def main() -> None:
    from etp_search.cli.common import to_jsonable
    from etp_search.signal_cache import SignalCache

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, required=True)
    add_run_options(ap)
    ap.add_argument("--ci", action="store_true", help="bootstrap intervals for the AFIB figures")
    ap.add_argument("--out", type=Path, default=RESULTS / "ceiling")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    with SignalCache.open(args.cache) as c:
        folds, labels = np.asarray(c.meta("strat_fold")), c.labels()
        tr, va = np.flatnonzero(np.isin(folds, args.train_folds)), np.flatnonzero(np.isin(folds, args.val_folds))
        xtr, xva = c.signals(tr), c.signals(va)
    ytr, names = targets([labels[i] for i in tr])
    lva = [labels[i] for i in va]
    torch.manual_seed(args.seed)
    rand = Supervised(args.encoder, len(names))
    rand_fig = figures(predict(rand, xva), lva, names, ci=args.ci)
    torch.manual_seed(args.seed)
    model = Supervised(args.encoder, len(names))
    seconds = train(model, xtr, ytr.astype(np.float32), args.epochs, args.seed)
    fig = figures(predict(model, xva), lva, names, ci=args.ci)
    doc = {"cache": str(args.cache), "encoder": args.encoder, "epochs": args.epochs, "seed": args.seed,
           "train_folds": args.train_folds, "val_folds": args.val_folds, "n_train": int(len(tr)), "n_val": int(len(va)),
           "n_val_afib": int(sum("AFIB" in lab for lab in lva)), "train_seconds": seconds,
           "figures": fig, "random_init": rand_fig,
           "command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_ceiling.py " + " ".join(sys.argv[1:])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(to_jsonable(doc), indent=2) + "\n")
    keys = ("afib_auc", "afib_ap", "super_macro", "rhythm_macro", "form_macro", "sub_macro", "text_to_ecg_ap_mean")
    md = [f"Supervised BCE ceiling, {args.encoder}, {args.epochs} epochs, train folds {args.train_folds} ({len(tr)} records), "
          f"validation folds {args.val_folds} ({len(va)} records, {doc['n_val_afib']} AFIB), {args.cache}", "",
          "| model | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys),
          "| BCE (statements + superclasses) | " + " | ".join(f"{fig[k]:.3f}" for k in keys) + " |",
          "| random init, untrained head | " + " | ".join(f"{rand_fig[k]:.3f}" for k in keys) + " |", "",
          "Rhythm per class (BCE): " + ", ".join(f"{c} {a:.3f}" for c, a in fig["rhythm_per_class"].items()), "",
          "Command: `" + doc["command"] + "`"]
    args.out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
