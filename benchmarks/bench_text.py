"""The report tower at full speed (issue 13 item 1): batch throughput and single-query latency.

    python benchmarks/bench_text.py [--records 1000] [--repeats 5] [--queries 40]

Batch: the distinct reports of the first ``--records`` PTB-XL records (shared data, else the
shipped example), encoded by the shipped checkpoint three ways in the same process, alternating,
median over ``--repeats``: ``encode_text`` (the report tower: distinct, length-sorted batches of
32), a plain length-sorted loop over the same model (the issue's 2.5x reference), and the old
padded order (input order, 128 per call, as training's text cache and ``index`` ran before).
All three must give the same vectors (allclose); the maximum difference is reported.

Single query: one report per call, 1 thread (what ``encode_text`` now does for one text) vs 2
threads (before), on a quiet machine and with a second process burning a core; median / p95 ms.
Results: benchmarks/results/text.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
SHARED = ROOT.parent / "shared" / "data" / "ptbxl"


def report_texts(n: int) -> tuple[list[str], str]:
    import pandas as pd

    from etp_search.text import compose_scp_report, load_scp_statements, parse_scp_codes

    base = SHARED if (SHARED / "ptbxl_database.csv").exists() else ROOT / "etp_search" / "examples" / "ptbxl"
    if not (base / "ptbxl_database.csv").exists():
        base = next((ROOT / "etp_search").rglob("ptbxl_database.csv")).parent
    st = load_scp_statements(base / "scp_statements.csv")
    df = pd.read_csv(base / "ptbxl_database.csv", nrows=n)
    return [compose_scp_report(parse_scp_codes(c), st) for c in df["scp_codes"]], str(base)


def _pool(enc, batch):
    states = enc.hf(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
    return (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


@torch.no_grad()
def old_padded(model, texts: list[str], chunk: int = 128) -> torch.Tensor:
    """Before: input order, one padded batch per 128 texts."""
    enc = model.text
    feats = torch.cat([_pool(enc, enc.tokenize(texts[i:i + chunk])) for i in range(0, len(texts), chunk)])
    return model.encode_text_features(feats)


@torch.no_grad()
def sorted_loop(model, texts: list[str], batch: int = 32) -> torch.Tensor:
    """The plain reference: sort by character length, pad per batch of 32, put back in order."""
    enc = model.text
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out = torch.empty(len(texts), enc.out_dim)
    for a in range(0, len(order), batch):
        idx = order[a:a + batch]
        out[idx] = _pool(enc, enc.tokenize([texts[i] for i in idx]))
    return model.encode_text_features(out)


@torch.no_grad()
def tower(model, texts: list[str]) -> torch.Tensor:
    return model.encode_text(texts)


@torch.no_grad()
def single_old(model, text: str) -> torch.Tensor:
    enc = model.text
    return model.encode_text_features(_pool(enc, enc.tokenize([text])))


def _burner() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def _lat(fn, texts: list[str]) -> dict[str, float]:
    ms = []
    for t in texts:
        a = time.perf_counter()
        fn(t)
        ms.append((time.perf_counter() - a) * 1e3)
    return {"median_ms": float(np.median(ms)), "p95_ms": float(np.percentile(ms, 95)), "n": len(ms)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the batch comparison")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS / "text.json")
    args = ap.parse_args()

    from etp_search.models.checkpoint import default_checkpoint, load_checkpoint

    torch.set_num_threads(args.threads)
    model = load_checkpoint(default_checkpoint())
    texts, source = report_texts(args.records)
    distinct = list(dict.fromkeys(texts))
    ways = {"report tower (encode_text)": tower, "plain length-sorted loop": sorted_loop, "old padded order": old_padded}
    ref = old_padded(model, distinct)
    diffs = {name: float((fn(model, distinct) - ref).abs().max()) for name, fn in ways.items()}
    times: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(args.repeats):
        for name, fn in ways.items():
            a = time.perf_counter()
            fn(model, distinct)
            times[name].append(time.perf_counter() - a)
    batch = {name: {"texts_per_s": len(distinct) / float(np.median(t)), "median_s": float(np.median(t)),
                    "max_abs_diff_vs_old": diffs[name]} for name, t in times.items()}
    # Records as `index` sees them (duplicates included): the tower encodes each distinct text once.
    a = time.perf_counter()
    tower(model, texts)
    records_s = time.perf_counter() - a

    queries = [distinct[i % len(distinct)] for i in range(args.queries)]
    single: dict[str, dict[str, float]] = {}
    for load in ("quiet", "under load"):
        burner = _burner() if load == "under load" else None
        try:
            time.sleep(0.5 if burner else 0)
            for threads in (1, 2):
                torch.set_num_threads(threads)
                fn = (lambda t: tower(model, [t])) if threads == 1 else (lambda t: single_old(model, t))
                fn(queries[0])
                single[f"{load}, {threads} thread{'s' if threads > 1 else ''}"] = _lat(fn, queries)
        finally:
            if burner:
                burner.kill()
                burner.wait()
    torch.set_num_threads(args.threads)
    doc = {"records": args.records, "distinct_texts": len(distinct), "source": source, "repeats": args.repeats,
           "batch_threads": args.threads, "load_average_at_start": os.getloadavg()[0], "batch": batch,
           "speedup_vs_old": batch["report tower (encode_text)"]["texts_per_s"] / batch["old padded order"]["texts_per_s"],
           "vs_plain_sorted_loop": batch["report tower (encode_text)"]["texts_per_s"] / batch["plain length-sorted loop"]["texts_per_s"],
           "records_per_s_with_duplicates": len(texts) / records_s, "single_query": single,
           "note": "2 shared cores (other jobs ran meanwhile); single query: 1 thread is encode_text's "
                   "own choice, 2 threads is the old path with torch.set_num_threads(2)"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    md = ["# Report tower: batch throughput and single-query latency", "",
          f"`python benchmarks/bench_text.py` - shipped checkpoint, {len(distinct)} distinct reports of "
          f"{args.records} PTB-XL records, {args.threads} torch thread(s), median of {args.repeats} alternating repeats.", "",
          "| way | texts/s | median s | max abs diff vs old |", "|---|---:|---:|---:|"]
    md += [f"| {k} | {v['texts_per_s']:.0f} | {v['median_s']:.2f} | {v['max_abs_diff_vs_old']:.1e} |" for k, v in batch.items()]
    md += ["", f"Report tower vs old padded order: {doc['speedup_vs_old']:.2f}x; vs the plain sorted loop: "
           f"{doc['vs_plain_sorted_loop']:.2f}x. All {args.records} records (with duplicates): "
           f"{doc['records_per_s_with_duplicates']:.0f} records/s.", "",
           f"Single query ({args.queries} reports, one per call):", "", "| condition | median ms | p95 ms |", "|---|---:|---:|"]
    md += [f"| {k} | {v['median_ms']:.1f} | {v['p95_ms']:.1f} |" for k, v in single.items()]
    md += ["", "Under load = a second process spinning one core. 1 thread is what `encode_text` does for a "
           "single text; 2 threads is the old path. The machine's 2 cores were shared with other jobs."]
    args.out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print(json.dumps(doc, indent=2) if args.json else "\n".join(md))


if __name__ == "__main__":
    main()
