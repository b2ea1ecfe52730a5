"""Index build rate against the encoder's forward-only rate, and end-to-end query latency.

    python benchmarks/bench_pipeline.py [--data DIR] [--checkpoint CKPT] [--limit N] [--repeats 3]

- build: `index_data` (read + preprocess in worker processes, encode ECG + report, store, FAISS)
  in records/s, against `encode_ecg` alone on pre-made batches of the same size (the ceiling).
- read: the same records through the reader stage alone (read + preprocess in 1 worker, no
  encoding): the CPU `index` spends besides the two towers. On a 2-core machine shared with other
  jobs the loop cannot hide it, so a "serial" bound (reading + both towers one after the other) is
  printed beside the two-tower ceiling.
- query: `Searcher.query_text` latency p50/p95 split into text encoding, search and metadata,
  over distinct queries after one warm-up.
Writes benchmarks/results/pipeline.json and pipeline.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _paths import portable  # noqa: E402
sys.path.insert(0, str(ROOT))

from etp_search.export import index_data, runner  # noqa: E402
from etp_search.models.resolve import resolve_checkpoint  # noqa: E402
from etp_search.models import load_checkpoint  # noqa: E402
from etp_search.preprocess import get_preset  # noqa: E402
from etp_search.search import Searcher  # noqa: E402

QUERIES = ["atrial fibrillation", "sinus rhythm normal ECG", "left bundle branch block", "inferior myocardial infarction",
           "left ventricular hypertrophy", "sinus bradycardia", "ST depression", "right bundle branch block",
           "premature ventricular complex", "first degree AV block", "T wave inversion", "sinus tachycardia"]


def _limited_copy(data: Path, limit: int, out: Path) -> Path:
    """A PTB-XL folder view with only the first `limit` rows that have signal files (symlinked)."""
    import pandas as pd

    db = pd.read_csv(data / "ptbxl_database.csv")
    have = db[[(data / f"{p}.hea").exists() for p in db["filename_lr"]]].head(limit)
    out.mkdir(parents=True, exist_ok=True)
    have.to_csv(out / "ptbxl_database.csv", index=False)
    shutil.copy(data / "scp_statements.csv", out / "scp_statements.csv")
    for p in have["filename_lr"]:
        dst = out / p
        dst.parent.mkdir(parents=True, exist_ok=True)
        for ext in (".hea", ".dat"):
            os.symlink(data / f"{p}{ext}", f"{dst}{ext}")
    return out


def bench_encoder(model, n: int, batch: int, length: int, repeats: int) -> float:
    x = torch.randn(batch, 12, length)
    with torch.inference_mode():
        model.encode_ecg(x)  # warm-up
        rates = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            done = 0
            while done < n:
                model.encode_ecg(x)
                done += batch
            rates.append(done / (time.perf_counter() - t0))
    return statistics.median(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "ptbxl")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--limit", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    if not (args.data / "ptbxl_database.csv").exists():
        args.data = ROOT / "etp_search" / "examples" / "ptbxl"
    ckpt = resolve_checkpoint(args.checkpoint)
    model = load_checkpoint(ckpt, load_text=False)
    preset = get_preset(model.cfg.preset)
    tmp = Path(tempfile.mkdtemp(prefix="etp-bench-"))
    try:
        data = _limited_copy(args.data, args.limit, tmp / "data")
        n = sum(1 for _ in (data / "records100").rglob("*.hea"))
        # The report tower is part of every index run: time it on this data's unique reports.
        from etp_search.readers import open_dataset

        reader = open_dataset(data, sampling_rate=int(preset.fs))
        texts = sorted({reader.read(r).text for r in reader.refs()})
        tmodel = load_checkpoint(ckpt, load_text=True)

        def text_rate_once() -> float:
            with torch.inference_mode():
                t0 = time.perf_counter()
                tmodel.encode_text(texts)  # the report tower sorts by length and batches itself
                return len(texts) / (time.perf_counter() - t0)

        from etp_search.export.source import open_source

        def read_rate_once() -> float:
            src = open_source(data, preset, text_source=tmodel.cfg.text_source, sampling_rate=int(preset.fs),
                              batch_size=args.batch_size, workers=1)
            t0 = time.perf_counter()
            got = sum(len(b.ids) for b in src.batches(list(range(src.total))))
            return got / (time.perf_counter() - t0)

        load_before = os.getloadavg()
        text_rate_once()  # warm-up
        # Each repeat times the pipeline and both ceilings back to back, so that load from other
        # processes on a shared machine hits all three alike.
        build, loop, encs, text_rates, read_rates, per_batch = [], [], [], [], [], []
        for r in range(args.repeats):
            def deferred() -> None:  # what `index` does: report vectors of up to 2,048 rows wait
                store = tmp / f"store{r}.h5"
                t0 = time.perf_counter()
                s = index_data(data, store, ckpt, batch_size=args.batch_size, progress=False)
                build.append(s["written"] / (time.perf_counter() - t0))
                loop.append(s["records_per_s"])  # read -> encode -> store loop only, no model load / FAISS

            def batch_by_batch() -> None:  # the reports of each batch encoded as it arrives (before)
                saved_defer = runner.TEXT_DEFER_ROWS
                runner.TEXT_DEFER_ROWS = 1
                try:
                    per_batch.append(index_data(data, tmp / f"old{r}.h5", ckpt, batch_size=args.batch_size,
                                                progress=False, build_index=False)["records_per_s"])
                finally:
                    runner.TEXT_DEFER_ROWS = saved_defer

            for run in ((deferred, batch_by_batch) if r % 2 == 0 else (batch_by_batch, deferred)):
                run()  # alternating order: a load spike from other jobs hits both ways alike
            encs.append(bench_encoder(model, n, args.batch_size, preset.length, 1))
            text_rates.append(text_rate_once())
            read_rates.append(read_rate_once())
        enc, text_rate = statistics.median(encs), statistics.median(text_rates)
        # Both towers back to back, no reading: the most `index` could reach on this machine.
        ceiling = 1.0 / (1.0 / enc + (len(texts) / n) / text_rate)
        read_rate = statistics.median(read_rates)
        serial = 1.0 / (1.0 / ceiling + 1.0 / read_rate)  # reading not overlapped at all
        load_after = os.getloadavg()

        lat = {"encode_ms": [], "search_ms": [], "metadata_ms": [], "total_ms": []}
        with Searcher.open(tmp / "store0.h5", checkpoint=ckpt) as s:
            s.query_text("warm up", k=10)
            view = s.view("ecg")  # the read-only view queries use: saved index + exact tail
            view.prepare()
            for rep in range(args.repeats):
                for q in QUERIES:
                    t0 = time.perf_counter()
                    with torch.inference_mode():
                        v = s.model.encode_text([f"{q} ({rep})" if rep else q]).float().numpy()
                    t1 = time.perf_counter()
                    scores, rows = view.search(v, 10)
                    t2 = time.perf_counter()
                    s.hits(rows[0], scores[0])
                    t3 = time.perf_counter()
                    for key, val in zip(lat, (t1 - t0, t2 - t1, t3 - t2, t3 - t0)):
                        lat[key].append(val * 1e3)
        pct = {k: {"p50": float(np.percentile(v, 50)), "p95": float(np.percentile(v, 95))} for k, v in lat.items()}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    build_med = statistics.median(build)
    loop_med = statistics.median(loop)
    per_batch_med = statistics.median(per_batch)
    paired = statistics.median(a / b for a, b in zip(loop, per_batch))
    result = {
        "command": "python benchmarks/bench_pipeline.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
                    "cuda": torch.cuda.is_available()},
        "checkpoint": str(ckpt), "encoder": model.cfg.ecg.name, "preset": preset.name, "records": n,
        "repeats": args.repeats, "batch_size": args.batch_size,
        "index_build_records_per_s": {"median": build_med, "runs": build},
        "index_loop_records_per_s": {"median": loop_med, "runs": loop},
        "encoder_forward_records_per_s": enc,
        "build_over_forward": build_med / enc,
        "unique_reports": len(texts), "text_encoder_texts_per_s": text_rate,
        "both_towers_records_per_s": ceiling, "build_over_both_towers": build_med / ceiling,
        "loop_over_both_towers": loop_med / ceiling,
        "index_loop_per_batch_reports_records_per_s": {"median": per_batch_med, "runs": per_batch},
        "loop_over_per_batch_reports": loop_med / per_batch_med,
        "loop_over_per_batch_reports_paired_median": paired,
        "read_only_records_per_s": read_rate, "serial_bound_records_per_s": serial,
        "load_average_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "query_latency_ms": pct, "queries": len(lat["total_ms"]),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pipeline.json").write_text(json.dumps(portable(result), indent=2))
    md = [
        f"# Index build and query latency ({n} PTB-XL records, {preset.name}, encoder {model.cfg.ecg.name})", "",
        f"Command: `{result['command']}`; {args.repeats} repeats, median; {os.cpu_count()} CPUs, "
        f"{torch.get_num_threads()} torch thread(s), CUDA: {torch.cuda.is_available()}; load average "
        f"{load_before[0]:.1f} before, {load_after[0]:.1f} after (other jobs on the machine).", "",
        "| stage | records/s | vs ECG forward | vs both towers |", "|---|---:|---:|---:|",
        f"| ECG encoder forward only | {enc:,.0f} | 1.00 | |",
        f"| report encoder on the {len(texts)} unique reports (texts/s) | {text_rate:,.0f} | | |",
        f"| both towers back to back, no I/O (ceiling for `index`) | {ceiling:,.0f} | {ceiling / enc:.2f} | 1.00 |",
        f"| read -> preprocess only (1 worker, no encoding) | {read_rate:,.0f} | | |",
        f"| reading + both towers one after the other (no overlap at all) | {serial:,.0f} | {serial / enc:.2f} | {serial / ceiling:.2f} |",
        f"| `index` read -> preprocess -> encode -> store loop (workers overlap reading with encoding) | {loop_med:,.0f} | {loop_med / enc:.2f} | {loop_med / ceiling:.2f} |",
        f"| the same loop, reports encoded batch by batch (before; `TEXT_DEFER_ROWS = 1`) | {per_batch_med:,.0f} | {per_batch_med / enc:.2f} | {per_batch_med / ceiling:.2f} |",
        f"| `index` whole call (also model loads, store compaction, FAISS build) | {build_med:,.0f} | {build_med / enc:.2f} | {build_med / ceiling:.2f} |",
        "", f"Deferred report encoding vs batch by batch, same run, alternating order: median of the per-repeat "
            f"ratios {paired:.2f}x (runs {', '.join(f'{a:.0f}/{b:.0f}' for a, b in zip(loop, per_batch))} records/s).",
        "", f"Query latency over {len(lat['total_ms'])} text queries, k=10, exact index over {n} rows:", "",
        "| part | p50 ms | p95 ms |", "|---|---:|---:|",
    ]
    md += [f"| {k.replace('_ms', '')} | {v['p50']:.2f} | {v['p95']:.2f} |" for k, v in pct.items()]
    (args.out / "pipeline.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
