"""float16 storage of the shipped weights: what rounding the weights to float16 changes, measured.

Issue 9 asks for a shipped checkpoint of <= 20 MB. The ResNet-18 ECG tower is 8.7 M parameters:
35.9 MB as float32, 18 MB as float16. ``load_checkpoint`` casts the stored weights back to float32,
so the model computes in float32 either way; only the weights are rounded (relative error <= 2^-11).

This script (1) optionally writes the float16 copy (``--write DIR``: the reference's config and
provenance kept, plus where the weights came from), then (2) embeds every record of the signal cache
with both and reports, per fold:
- the cosine between the two ECG vectors of each record (min, median) and the largest change of
  the headline query's score ("atrial fibrillation" . ECG);
- how many of the query's top 10 (and top 50) records per fold stay the same, and Spearman's rho of
  the two score orders;
- on the validation fold (9) only, which has labels the card reports: every figure of
  ``_recipe_eval.evaluate_embeddings`` for both. Fold 10, the test fold, is compared without its
  labels (vectors and rankings only), so this check is not another read of the test fold.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_weights_dtype.py \\
        --reference runs/etp-ptbxl-r18-16ep/best --candidate etp_search/checkpoints/etp-ptbxl \\
        [--write etp_search/checkpoints/etp-ptbxl]
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
from _recipe_eval import QUERY, embed, evaluate_embeddings, figures_row  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
log = logging.getLogger("bench_weights_dtype")


def write_float16(reference: Path, out: Path) -> None:
    """The reference checkpoint re-saved with float16 weights, its provenance kept and extended."""
    from etp_search.models import checkpoint_fingerprint, load_checkpoint, read_checkpoint_config
    from etp_search.models.checkpoint import save_checkpoint

    doc = read_checkpoint_config(reference)
    extra = dict(doc.get("extra") or {})
    if (out / "config.json").is_file():  # a shipped folder's own provenance (data, recipe, command) is kept
        extra.update(read_checkpoint_config(out).get("extra") or {})
    extra["weights_note"] = ("float16 storage of float32-trained weights (cast back to float32 on load); the frozen "
                             "text tower is not stored: referenced by name + text_model_fingerprint")
    extra["weights_from"] = {
        "fingerprint": checkpoint_fingerprint(reference), "dtype": doc.get("weights_dtype", "float32"),
        "command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_weights_dtype.py --write " + str(out),
        "note": "the same trained weights rounded to float16 for storage (<= 20 MB); loading casts them "
                "back to float32; benchmarks/results/weights_dtype.md measures what the rounding changes",
    }
    model = load_checkpoint(reference, load_text=False)
    save_checkpoint(model, out, extra=extra, dtype="float16")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.argsort(np.argsort(a)).astype(np.float64)
    rb = np.argsort(np.argsort(b)).astype(np.float64)
    return float(np.corrcoef(ra, rb)[0, 1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", type=Path, default=ROOT / "runs" / "etp-ptbxl-r18-16ep" / "best")
    ap.add_argument("--candidate", type=Path, default=ROOT / "etp_search" / "checkpoints" / "etp-ptbxl")
    ap.add_argument("--write", type=Path, default=None, help="first write the float16 copy of --reference here")
    ap.add_argument("--cache", type=Path, default=ROOT / "etp-data" / "ptbxl-both-100hz.h5")
    ap.add_argument("--label-folds", type=lambda s: [int(x) for x in s.split(",")], default=[9])
    ap.add_argument("--out", type=Path, default=RESULTS / "weights_dtype")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)

    from etp_search.models import checkpoint_fingerprint, load_checkpoint, read_checkpoint_config
    from etp_search.models.checkpoint import WEIGHTS_NAME
    from etp_search.signal_cache import SignalCache

    if args.write is not None:
        write_float16(args.reference, args.write)
        args.candidate = args.write
    ref, cand = load_checkpoint(args.reference), load_checkpoint(args.candidate)
    cache = SignalCache.open(args.cache)
    folds = np.asarray(cache.meta("strat_fold"))
    labels_all = cache.labels()
    t0 = time.perf_counter()
    x = cache.signals(np.arange(len(folds)))
    e_ref, e_cand = embed(ref, x), embed(cand, x)
    log.info("embedded %d records twice in %.0f s", len(x), time.perf_counter() - t0)
    with torch.no_grad():
        q_ref = ref.encode_text([QUERY]).float().numpy()[0]
        q_cand = cand.encode_text([QUERY]).float().numpy()[0]
    s_ref, s_cand = e_ref @ q_ref, e_cand @ q_cand
    cos = (e_ref * e_cand).sum(1)

    per_fold = []
    for f in sorted(set(folds.tolist())):
        rows = np.flatnonzero(folds == f)
        o_ref, o_cand = np.argsort(-s_ref[rows]), np.argsort(-s_cand[rows])
        per_fold.append({
            "fold": int(f), "n": int(len(rows)),
            "cos_min": float(cos[rows].min()), "cos_median": float(np.median(cos[rows])),
            "query_score_max_change": float(np.abs(s_ref[rows] - s_cand[rows]).max()),
            "top10_same": int(len(set(o_ref[:10]) & set(o_cand[:10]))),
            "top50_same": int(len(set(o_ref[:50]) & set(o_cand[:50]))) if len(rows) >= 50 else None,
            "spearman": spearman(s_ref[rows], s_cand[rows]),
        })
    labelled = {}
    for f in args.label_folds:
        rows = np.flatnonzero(folds == f)
        lab = [labels_all[r] for r in rows]
        labelled[str(f)] = {"reference": figures_row(evaluate_embeddings(ref, e_ref[rows], lab)),
                            "candidate": figures_row(evaluate_embeddings(cand, e_cand[rows], lab))}
    size = {name: (p / WEIGHTS_NAME).stat().st_size for name, p in (("reference", args.reference), ("candidate", args.candidate))}
    doc = {
        "command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_weights_dtype.py " + " ".join(sys.argv[1:]),
        "cache": portable(str(args.cache)), "records": int(len(x)),
        "reference": {"path": portable(str(args.reference)), "fingerprint": checkpoint_fingerprint(args.reference),
                      "dtype": read_checkpoint_config(args.reference).get("weights_dtype"), "bytes": size["reference"]},
        "candidate": {"path": portable(str(args.candidate)), "fingerprint": checkpoint_fingerprint(args.candidate),
                      "dtype": read_checkpoint_config(args.candidate).get("weights_dtype"), "bytes": size["candidate"]},
        "all": {"cos_min": float(cos.min()), "cos_median": float(np.median(cos)),
                "query_score_max_change": float(np.abs(s_ref - s_cand).max()),
                "query_vector_cos": float(q_ref @ q_cand)},
        "per_fold": per_fold, "labelled": labelled,
    }
    args.out.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(doc))
    print(markdown(doc))


def markdown(doc: dict) -> str:
    r, c, a = doc["reference"], doc["candidate"], doc["all"]
    lines = [
        "# float16 storage of the shipped weights", "",
        f"Reference `{r['path']}` ({r['dtype']}, {r['bytes'] / 1e6:.1f} MB, sha256 `{r['fingerprint'][:8]}…`) against "
        f"`{c['path']}` ({c['dtype']}, {c['bytes'] / 1e6:.1f} MB, sha256 `{c['fingerprint'][:8]}…`): the same trained "
        "weights, rounded to float16 for storage and cast back to float32 on load.", "",
        f"All {doc['records']} records of `{doc['cache']}`: ECG vector cosine reference . candidate min {a['cos_min']:.6f}, "
        f"median {a['cos_median']:.6f}; query vector (\"{QUERY}\") cosine {a['query_vector_cos']:.6f}; the largest change "
        f"of a record's query score {a['query_score_max_change']:.5f}.", "",
        f"| fold | records | cos min | cos median | query score max change | top 10 same | top 50 same | Spearman rho |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for f in doc["per_fold"]:
        t50 = "" if f["top50_same"] is None else f"{f['top50_same']}/50"
        lines.append(f"| {f['fold']} | {f['n']} | {f['cos_min']:.6f} | {f['cos_median']:.6f} | {f['query_score_max_change']:.5f} | "
                     f"{f['top10_same']}/10 | {t50} | {f['spearman']:.6f} |")
    lines += ["", "Fold 10 (the test fold) is compared on vectors and rankings only; its labels are not read here.", ""]
    for fold, pair in doc["labelled"].items():
        keys = list(pair["reference"])
        lines += [f"Figures on fold {fold} (validation), both weights:", "",
                  "| weights | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
        for name in ("reference", "candidate"):
            lines.append(f"| {name} | " + " | ".join(f"{pair[name][k]:.4f}" for k in keys) + " |")
        lines.append("")
    lines += [f"Command: `{doc['command']}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
