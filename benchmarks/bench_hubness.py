"""Hubness of ECG vectors (k-occurrence N_10) and whether a correction (centring, CSLS) helps retrieval.

Inner split, honest protocol: a model trained on folds 1-6 (bench_recipes.py's R9 run) is measured on
validation folds 7-8; the correction is chosen there. Only the chosen variant (and the raw scores) is
then scored with the shipped checkpoint (trained on folds 1-8) on fold 9, as a check. A random-init
model of the same encoder is measured beside it.

Measured per variant: raw; centred (ECG vectors minus the corpus mean, renormalised); centred-both
(also each text query minus the mean of the text-query set); CSLS (text->ECG: 2 cos - r(x), r(x) the
mean cosine of the ECG to its 10 nearest text queries; ECG->ECG: the same with the 10 nearest ECGs);
centred+CSLS:
- N_10 of each ECG over (a) text queries: every SCP statement description plus every class prompt of
  the superdiagnostic, subdiagnostic, rhythm and form tasks, (b) ECG->ECG leave-one-out queries:
  skewness, max, share never in any top 10, the top hubs with their labels;
- text->ECG average precision of the statement descriptions (AFIB, LVH, IMI, CLBBB, and the mean over
  every statement with >= 5 positives), with a paired bootstrap of the mean's change against raw;
- zero-shot macro ROC-AUC (default prompts), superdiagnostic and rhythm;
- ECG->ECG: share of the 10 nearest that share a superdiagnostic class with the query.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_hubness.py \\
        --cache ../wt-model/etp-data/ptbxl-both-100hz.h5 --inner-model ../wt-model/runs/recipes/R9/best
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _paths import portable  # noqa: E402
from _recipe_eval import average_precision, embed, has_code  # noqa: E402
from etp_search.evaluation.hubness import centre, corpus_mean, csls, csls_penalty, hubness_report, k_occurrence, normalise  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
K = 10
CODES = ("AFIB", "LVH", "IMI", "CLBBB")
VARIANTS = ("raw", "centred", "centred-both", "csls", "centred+csls")
log = logging.getLogger("bench_hubness")


def text_queries(model) -> tuple[np.ndarray, list[str], dict]:
    """(Q, D) normalised text vectors: statement descriptions then class-prompt ensembles; their names."""
    from etp_search.evaluation.zeroshot import class_embeddings, class_prompts, encode_prompts
    from etp_search.labels import get_task
    from etp_search.text import load_scp_statements

    desc = load_scp_statements()["description"]
    codes = [str(c) for c in desc.index]
    with torch.no_grad():
        vs = model.encode_text([str(desc[c]) for c in codes]).float().numpy()
    names = [f"scp:{c}" for c in codes]
    vecs = [normalise(vs)]
    cls = {}
    for t in ("superdiagnostic", "subdiagnostic", "rhythm", "form"):
        task = get_task(t)
        ce = class_embeddings(encode_prompts(model, class_prompts(task, "default")))
        cls[t] = (task, ce)
        vecs.append(ce)
        names += [f"{t}:{c}" for c in task.classes]
    return np.concatenate(vecs), names, {"statement_vecs": normalise(vs), "statement_codes": codes, "classes": cls}


def macro_auc_of(task, ecg_scores_fn, labels) -> float:
    from etp_search.evaluation.metrics import macro_auc

    keep = np.array([task.has_labels(lab) for lab in labels])
    y = task.matrix([lab for lab, k in zip(labels, keep) if k])
    return float(macro_auc(y, ecg_scores_fn(keep))[0])


def ap_matrix_mean(Y: np.ndarray, S: np.ndarray) -> float:
    return float(np.nanmean([average_precision(Y[:, j], S[:, j]) for j in range(Y.shape[1])]))


def variant_scores(name: str, ecg: np.ndarray, tq: np.ndarray):
    """(ECG vectors used, text->ECG score fn(Q,D)->(N,Q), ECG->ECG (N,N) scores) of one variant."""
    e = centre(ecg) if name.startswith("centred") else normalise(ecg)
    #: centred-both: text queries are centred too, by the mean of the reference text-query set
    t_mean = corpus_mean(tq) if name == "centred-both" else None
    use_csls = name.endswith("csls")
    r_text = csls_penalty(tq, e, k=K) if use_csls else None
    ee = e @ e.T
    if use_csls:
        r_ecg = csls_penalty(e, e, k=K, exclude_self=True)
        ee = csls(ee, r_ecg)

    def text_scores(q: np.ndarray) -> np.ndarray:
        s = e @ (normalise(q) if t_mean is None else centre(q, t_mean)).T  # (N, Q)
        return (2 * s - r_text[:, None]) if use_csls else s

    return e, text_scores, ee


def evaluate(model, ecg: np.ndarray, labels: list[dict], variants=VARIANTS, n_boot: int = 500, seed: int = 0) -> dict:
    tq, tnames, extra = text_queries(model)
    codes = extra["statement_codes"]
    Y_all = np.stack([has_code(labels, c) for c in codes], 1)
    many = Y_all.sum(0) >= 5
    super_task = extra["classes"]["superdiagnostic"][0]
    y_super = super_task.matrix(labels).astype(bool)
    out = {"n": len(ecg), "n_afib": int(sum("AFIB" in lab for lab in labels)), "n_text_queries": len(tq), "n_statements_ge5": int(many.sum()),
           "statements_ge5": [c for c, m in zip(codes, many) if m], "variants": {}}
    rng = np.random.default_rng(seed)
    boots = [rng.integers(0, len(ecg), len(ecg)) for _ in range(n_boot)]
    base_S = None
    for v in variants:
        e, text_scores, ee = variant_scores(v, ecg, tq)
        s_text = text_scores(tq)  # (N, Q)
        nk_text = k_occurrence(s_text.T, K)
        nk_ecg = k_occurrence(ee, K, exclude_self=True)
        S = text_scores(extra["statement_vecs"])  # (N, n_statements)
        aps = {c: average_precision(Y_all[:, codes.index(c)], S[:, codes.index(c)]) for c in CODES}
        mean_ap = ap_matrix_mean(Y_all[:, many], S[:, many])
        zs = {}
        for t in ("superdiagnostic", "rhythm"):
            task, ce = extra["classes"][t]
            zs[t] = macro_auc_of(task, lambda keep: text_scores(ce)[keep], labels)
        nn = np.argsort(-np.where(np.eye(len(ee), dtype=bool), -np.inf, ee), axis=1, kind="stable")[:, :K]
        has_super = y_super.any(1)
        share = (y_super[nn] & y_super[:, None, :]).any(-1)[has_super].mean()
        entry = {"text": hubness_report(nk_text, K, len(tq)), "ecg": hubness_report(nk_ecg, K, len(ecg)),
                 "text_to_ecg_ap": aps, "text_to_ecg_ap_mean_ge5": mean_ap, "zs_super": zs["superdiagnostic"],
                 "zs_rhythm": zs["rhythm"], "ecg_to_ecg_super_match_at10": float(share)}
        for side in ("text", "ecg"):
            for t in entry[side]["top"]:
                lab = labels[t["index"]]
                t["labels"] = sorted(lab, key=lambda c: -float(lab[c]))
        # does hubness hurt: of the top-10 slots of the statement queries, how often is the record a positive,
        # for hub records (N10 > 2 x mean over all text queries) vs the rest
        n_st = len(codes)
        top_st = np.argsort(-s_text[:, :n_st].T, axis=1, kind="stable")[:, :K]  # (n_statements, K)
        hit = Y_all.T[np.arange(n_st)[:, None], top_st]
        is_hub = (nk_text > 2 * nk_text.mean())[top_st]
        entry["statement_top10"] = {"hub_slot_share": float(is_hub.mean()),
                                    "precision_hub_slots": float(hit[is_hub].mean()) if is_hub.any() else None,
                                    "precision_other_slots": float(hit[~is_hub].mean()),
                                    "precision_all": float(hit.mean())}
        pace = [i for i, lab in enumerate(labels) if "PACE" in lab]
        entry["pace_n10"] = {"text": [int(nk_text[i]) for i in pace], "ecg": [int(nk_ecg[i]) for i in pace],
                             "text_rank_percentile": [float((nk_text < nk_text[i]).mean()) for i in pace]}
        entry["pace_in_top10_hubs"] = {side: sum("PACE" in t["labels"] for t in entry[side]["top"]) for side in ("text", "ecg")}
        if base_S is None:
            base_S = S
        else:
            d = [ap_matrix_mean(Y_all[b][:, many], S[b][:, many]) - ap_matrix_mean(Y_all[b][:, many], base_S[b][:, many])
                 for b in boots if (Y_all[b][:, many].sum(0) > 0).all()]
            entry["mean_ap_change_vs_raw"] = mean_ap - out["variants"]["raw"]["text_to_ecg_ap_mean_ge5"]
            entry["mean_ap_change_ci95"] = [float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))]
        y_af = Y_all[:, codes.index("AFIB")]
        s_af = S[:, codes.index("AFIB")]
        aa = [average_precision(y_af[b], s_af[b]) for b in boots if y_af[b].any()]
        entry["afib_ap_ci95"] = [float(np.percentile(aa, 2.5)), float(np.percentile(aa, 97.5))]
        out["variants"][v] = entry
        log.info("%s: text skew %.2f max %d zero %.2f | ecg skew %.2f max %d | meanAP %.3f super %.3f rhythm %.3f",
                 v, entry["text"]["skewness"], entry["text"]["max"], entry["text"]["share_zero"], entry["ecg"]["skewness"],
                 entry["ecg"]["max"], mean_ap, zs["superdiagnostic"], zs["rhythm"])
    return out


def choose(doc: dict) -> str:
    """A correction wins only if its mean statement AP gain has a bootstrap interval above 0 and neither
    zero-shot macro AUC drops by more than 0.005; among winners the largest mean-AP gain."""
    raw = doc["variants"]["raw"]
    best, gain = "raw", 0.0
    for v, e in doc["variants"].items():
        if v == "raw":
            continue
        ok = e["mean_ap_change_ci95"][0] > 0 and e["zs_super"] >= raw["zs_super"] - 0.005 and e["zs_rhythm"] >= raw["zs_rhythm"] - 0.005
        if ok and e["mean_ap_change_vs_raw"] > gain:
            best, gain = v, e["mean_ap_change_vs_raw"]
    return best


def markdown(doc: dict) -> str:
    lines = [f"# Hubness (k = {K})", ""]
    for run in ("inner", "random_init", "fold9_check"):
        if run not in doc:
            continue
        r = doc[run]
        lines += [f"## {r['title']}", "",
                  f"{r['n']} records ({r['n_afib']} AFIB); {r['n_text_queries']} text queries (SCP statement descriptions + class prompts); "
                  f"{r['n_statements_ge5']} statements with >= 5 positives.", "",
                  "| variant | text N10 skew | text max | text never | ECG N10 skew | ECG max | ECG never | AFIB AP [95 %] | LVH | IMI | CLBBB | mean AP (>=5 pos) | change [95 %] | zs super | zs rhythm | ECG->ECG super@10 |",
                  "|---|" + "---|" * 15]
        for v, e in r["variants"].items():
            ch = (f"{e['mean_ap_change_vs_raw']:+.3f} [{e['mean_ap_change_ci95'][0]:+.3f}, {e['mean_ap_change_ci95'][1]:+.3f}]"
                  if "mean_ap_change_vs_raw" in e else "")
            a = e["text_to_ecg_ap"]
            lines.append(f"| {v} | {e['text']['skewness']:.2f} | {e['text']['max']} | {e['text']['share_zero']:.2f} | "
                         f"{e['ecg']['skewness']:.2f} | {e['ecg']['max']} | {e['ecg']['share_zero']:.2f} | "
                         f"{a['AFIB']:.3f} [{e['afib_ap_ci95'][0]:.3f}, {e['afib_ap_ci95'][1]:.3f}] | {a['LVH']:.3f} | {a['IMI']:.3f} | "
                         f"{a['CLBBB']:.3f} | {e['text_to_ecg_ap_mean_ge5']:.3f} | {ch} | {e['zs_super']:.3f} | {e['zs_rhythm']:.3f} | "
                         f"{e['ecg_to_ecg_super_match_at10']:.3f} |")
        raw = r["variants"]["raw"]
        lines += ["", "Top text-query hubs (raw): " + "; ".join(
            f"#{t['index']} N10={t['n_k']} ({','.join(t['labels'][:3])})" for t in raw["text"]["top"][:5]),
            "", "Top ECG->ECG hubs (raw): " + "; ".join(
            f"#{t['index']} N10={t['n_k']} ({','.join(t['labels'][:3])})" for t in raw["ecg"]["top"][:5]),
            "", f"PACE among the 10 largest N10 (raw): text {raw['pace_in_top10_hubs']['text']}, ECG {raw['pace_in_top10_hubs']['ecg']}; "
            f"PACE records in this set: {r.get('n_pace', '?')}; their text N10 {raw['pace_n10']['text']} "
            f"(percentile {[round(p, 2) for p in raw['pace_n10']['text_rank_percentile']]}), ECG N10 {raw['pace_n10']['ecg']}.", "",
            "Does hubness hurt (statement-description queries, top-10 slots; hub = text N10 > 2 x mean): " + "; ".join(
                f"{v}: hubs fill {e['statement_top10']['hub_slot_share']:.2f} of slots, precision hub slots "
                f"{e['statement_top10']['precision_hub_slots'] if e['statement_top10']['precision_hub_slots'] is None else round(e['statement_top10']['precision_hub_slots'], 3)}"
                f" vs other {e['statement_top10']['precision_other_slots']:.3f}"
                for v, e in r["variants"].items()), ""]
        if "choice" in r:
            lines += [f"**Choice on folds 7-8: `{r['choice']}`** ({' '.join(choose.__doc__.split())})", ""]
    lines += ["Command: `" + doc["command"] + "`"]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--inner-model", type=Path, required=True, help="checkpoint trained on folds 1-6")
    ap.add_argument("--shipped-model", type=Path, default=ROOT / "etp_search" / "checkpoints" / "etp-ptbxl")
    ap.add_argument("--val-folds", type=lambda s: [int(x) for x in s.split(",")], default=[7, 8])
    ap.add_argument("--check-fold", type=int, default=9)
    ap.add_argument("--n-boot", type=int, default=500)
    ap.add_argument("--out", type=Path, default=RESULTS / "hubness")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    from etp_search.models import EcgEncoderConfig, EtpConfig, EtpModel, load_checkpoint
    from etp_search.signal_cache import SignalCache

    with SignalCache.open(args.cache) as c:
        folds, labels = np.asarray(c.meta("strat_fold")), c.labels()
        val = np.flatnonzero(np.isin(folds, args.val_folds))
        chk = np.flatnonzero(folds == args.check_fold)
        x_val, x_chk = c.signals(val), c.signals(chk)
    lab_val, lab_chk = [labels[i] for i in val], [labels[i] for i in chk]
    doc = {"command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_hubness.py " + " ".join(sys.argv[1:]),
           "k": K, "cache": str(args.cache), "inner_model": str(args.inner_model), "shipped_model": str(args.shipped_model)}
    t0 = time.perf_counter()
    inner = load_checkpoint(args.inner_model)
    r = evaluate(inner, embed(inner, x_val), lab_val, n_boot=args.n_boot)
    r["title"] = f"Inner model ({args.inner_model.parent.name}/{args.inner_model.name}, trained folds 1-6) on folds {args.val_folds}"
    r["n_pace"] = int(sum("PACE" in lab for lab in lab_val))
    r["choice"] = choose(r)
    doc["inner"] = r
    torch.manual_seed(0)
    rnd = EtpModel(EtpConfig(ecg=EcgEncoderConfig(name=inner.cfg.ecg.name), preset="etp-100hz", text_source="scp_en"))
    rr = evaluate(rnd, embed(rnd, x_val), lab_val, n_boot=args.n_boot)
    rr["title"] = f"Random-init model (same encoder) on folds {args.val_folds} (baseline)"
    rr["n_pace"] = r["n_pace"]
    doc["random_init"] = rr
    shipped = load_checkpoint(args.shipped_model)
    variants = ("raw",) if r["choice"] == "raw" else ("raw", r["choice"])
    rc = evaluate(shipped, embed(shipped, x_chk), lab_chk, variants=variants, n_boot=args.n_boot)
    rc["title"] = f"Check: shipped checkpoint (trained folds 1-8) on fold {args.check_fold}, the choice only"
    rc["n_pace"] = int(sum("PACE" in lab for lab in lab_chk))
    doc["fold9_check"] = rc
    doc["seconds"] = time.perf_counter() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from etp_search.cli.common import to_jsonable

    doc = portable(to_jsonable(doc))
    args.out.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(doc))
    print(markdown(doc))


if __name__ == "__main__":
    main()
