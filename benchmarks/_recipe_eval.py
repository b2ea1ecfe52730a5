"""Figures of one ECG-text model on a set of PTB-XL records (shared by bench_recipes / bench_model_card).

- the headline query: cosine of each ECG to ``"atrial fibrillation"``, ROC-AUC and average precision
  for the AFIB statement (with a bootstrap interval where asked);
- zero-shot macro ROC-AUC (default prompts, and the ensemble where asked) for superdiagnostic, rhythm,
  form, subdiagnostic; per-class AUC of the rhythm classes;
- text->ECG average precision of the statement descriptions of AFIB, LVH, IMI, CLBBB (their mean);
- a linear probe for rhythm on the ECG vectors (fit on ``probe_fit`` rows, strength chosen on
  ``probe_select`` rows, scored on the evaluated rows).

``add_run_options`` is the command-line block bench_recipes and bench_ceiling share.
"""

from __future__ import annotations

import argparse
from typing import Sequence

import numpy as np
import torch

QUERY = "atrial fibrillation"
RETRIEVAL_CODES = ("AFIB", "LVH", "IMI", "CLBBB")
ZS_TASKS = ("superdiagnostic", "subdiagnostic", "rhythm", "form")


def fold_list(text: str) -> list[int]:
    """``"1,2,3"`` -> ``[1, 2, 3]`` (the --train-folds / --val-folds type)."""
    return [int(x) for x in text.split(",")]


def add_run_options(ap: argparse.ArgumentParser) -> None:
    """--encoder, --epochs, --seed, --threads and the inner split (train folds 1-6, validation folds 7-8)."""
    ap.add_argument("--encoder", default="resnet1d_small")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--train-folds", type=fold_list, default=[1, 2, 3, 4, 5, 6])
    ap.add_argument("--val-folds", type=fold_list, default=[7, 8])


def average_precision(y: np.ndarray, s: np.ndarray) -> float:
    """Average precision of a ranking by descending score (nan without positives)."""
    y = np.asarray(y, bool)
    if y.sum() == 0:
        return float("nan")
    order = np.argsort(-np.asarray(s, np.float64), kind="stable")
    hits = y[order]
    prec = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(prec[hits].mean())


def bootstrap(y: np.ndarray, s: np.ndarray, fn, n_boot: int = 1000, seed: int = 0) -> list[float]:
    """Percentile 95 % interval of fn(y, s) over record resamples that keep >= 1 positive and negative."""
    rng = np.random.default_rng(seed)
    vals = []
    n = len(y)
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        if 0 < y[idx].sum() < n:
            vals.append(fn(y[idx], s[idx]))
    return [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))] if vals else [float("nan")] * 2


@torch.no_grad()
def embed(model, signals: np.ndarray, batch: int = 256) -> np.ndarray:
    model.eval()
    x = torch.from_numpy(np.asarray(signals, np.float32))
    return torch.cat([model.encode_ecg(x[i:i + batch]).float() for i in range(0, len(x), batch)]).numpy()


def has_code(labels: Sequence[dict], code: str) -> np.ndarray:
    return np.array([code in lab for lab in labels], bool)


@torch.no_grad()
def evaluate_embeddings(model, ecg: np.ndarray, labels: Sequence[dict], prompt_sets=("default",),
                        ci: bool = False, probe: tuple[np.ndarray, list, np.ndarray, list] | None = None) -> dict:
    """All figures for ECG vectors ``ecg`` (N, D) with their label dicts; ``model`` encodes texts."""
    from etp_search.evaluation.metrics import macro_auc, roc_auc
    from etp_search.evaluation.zeroshot import class_prompts, encode_prompts, scores
    from etp_search.labels import get_task
    from etp_search.text import load_scp_statements

    out: dict = {"n": int(len(ecg))}
    y_af = has_code(labels, "AFIB")
    q = model.encode_text([QUERY]).float().numpy()[0]
    s = ecg @ q
    out["afib"] = {"n_pos": int(y_af.sum()), "query_auc": roc_auc(y_af, s), "query_ap": average_precision(y_af, s),
                   "prevalence": float(y_af.mean())}
    if ci:
        out["afib"]["query_ap_ci95"] = bootstrap(y_af, s, average_precision)
        out["afib"]["query_auc_ci95"] = bootstrap(y_af, s, roc_auc)
    out["zeroshot"] = {}
    for ps in prompt_sets:
        for tname in ZS_TASKS:
            task = get_task(tname)
            keep = np.array([task.has_labels(lab) for lab in labels])
            y = task.matrix([lab for lab, k in zip(labels, keep) if k])
            sc = scores(ecg[keep], encode_prompts(model, class_prompts(task, ps)))
            m, per, _ = macro_auc(y, sc)
            entry = {"macro_auc": float(m), "n": int(keep.sum())}
            if tname == "rhythm":
                entry["per_class"] = {c: float(a) for c, a in zip(task.classes, per) if y[:, task.classes.index(c)].sum() > 0}
                af = task.classes.index("AFIB")
                entry["afib_auc"] = roc_auc(y[:, af], sc[:, af])
            out["zeroshot"][f"{tname}/{ps}"] = entry
    desc = load_scp_statements()["description"]
    aps = {}
    for code in RETRIEVAL_CODES:
        y = has_code(labels, code)
        v = model.encode_text([str(desc[code])]).float().numpy()[0]
        aps[code] = average_precision(y, ecg @ v)
    out["text_to_ecg_ap"] = aps
    out["text_to_ecg_ap_mean"] = float(np.nanmean(list(aps.values())))
    if probe is not None:
        from etp_search.evaluation.probe import fit_probe

        x_fit, lab_fit, x_sel, lab_sel = probe
        task = get_task("rhythm")
        pr = fit_probe(x_fit, task.matrix(lab_fit), x_sel, task.matrix(lab_sel))
        y = task.matrix(labels)
        keep = y.any(1)
        m, per, _ = macro_auc(y[keep], pr.decision(ecg[keep]))
        af = task.classes.index("AFIB")
        out["probe_rhythm"] = {"macro_auc": float(m), "afib_auc": roc_auc(y[keep][:, af], pr.decision(ecg[keep])[:, af]),
                               "lambda": pr.lam}
    return out


def figures_row(r: dict) -> dict:
    """The flat figures of one evaluation (for tables)."""
    zs = r["zeroshot"]
    row = {"afib_query_auc": r["afib"]["query_auc"], "afib_query_ap": r["afib"]["query_ap"],
           "zs_super": zs["superdiagnostic/default"]["macro_auc"], "zs_rhythm": zs["rhythm/default"]["macro_auc"],
           "zs_form": zs["form/default"]["macro_auc"], "zs_sub": zs["subdiagnostic/default"]["macro_auc"],
           "zs_afib": zs["rhythm/default"]["afib_auc"], "text_to_ecg_ap": r["text_to_ecg_ap_mean"]}
    if "probe_rhythm" in r:
        row["probe_rhythm"] = r["probe_rhythm"]["macro_auc"]
    return row
