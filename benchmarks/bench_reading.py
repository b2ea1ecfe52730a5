"""Records per second: parsing WFDB records one by one vs building and reading the signal cache.

    .venv/bin/python benchmarks/bench_reading.py --data ../shared/data/ptbxl --limit 1000 --repeats 3

Rows (all on the same records, warm page cache, medians over --repeats):
- ``wfdb.rdrecord`` one by one: the baseline every ratio is against (no preprocessing at all);
- reader + preprocess, one process: what training would pay per epoch without a cache;
- ``build_cache`` with --workers processes: the one-off cost of `etp-search prepare`;
- reading the cache: sequential batches, and random batches (sorted indices, as a shuffled
  DataLoader asks for them).
Writes benchmarks/results/reading.json and reading.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import wfdb

from etp_search.preprocess import preprocess
from etp_search.readers import open_dataset
from etp_search.signal_cache import SignalCache, build_cache

RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(RESULTS.parent))
from _paths import portable  # noqa: E402


class Head:
    """The first ``n`` records of a reader (picklable, for the worker processes)."""

    def __init__(self, reader: Any, n: int):
        self._r, self._refs = reader, reader.refs()[:n]
        self.format_name, self.root, self.fs = reader.format_name, reader.root, reader.fs
        self.text_source, self.summary = reader.text_source, reader.summary

    def refs(self) -> list[str]:
        return list(self._refs)

    def read(self, ref: str):
        return self._r.read(ref)


def _median_rate(n: int, fn: Callable[[], Any], repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return n / statistics.median(times), times


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "ptbxl")
    ap.add_argument("--limit", type=int, default=1000, help="records (PTB-XL 100 Hz)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64, help="cache read batch size")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    base = open_dataset(args.data, sampling_rate=100)
    reader = Head(base, args.limit)
    refs = reader.refs()
    n = len(refs)
    files = [str(args.data / base.row(r)["filename_lr"]) for r in refs]
    rows: list[dict[str, Any]] = []

    def add(name: str, rate: float, times: list[float], note: str) -> None:
        rows.append({"method": name, "records_per_s": rate, "seconds": times, "note": note})
        print(f"{name:38s} {rate:10.1f} rec/s", file=sys.stderr)

    rate, t = _median_rate(n, lambda: [wfdb.rdrecord(f) for f in files], args.repeats)
    add("wfdb.rdrecord one by one", rate, t, "baseline: parse only, no preprocessing")

    def read_and_preprocess() -> None:
        for r in refs:
            rec = reader.read(r)
            preprocess(rec.signal, rec.fs, "etp-100hz")

    rate, t = _median_rate(n, read_and_preprocess, args.repeats)
    add("reader + preprocess, 1 process", rate, t, "etp_search reader (own header parser, numpy fast path); every epoch without a cache")

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cache.h5"

        def build() -> None:
            build_cache(reader, out, "etp-100hz", workers=args.workers, progress=False, force=True)

        rate, t = _median_rate(n, build, args.repeats)
        add(f"build_cache, workers={args.workers}", rate, t, "one-off: read + preprocess + write")
        size_mb = out.stat().st_size / 1e6

        with SignalCache.open(out) as c:
            def seq() -> None:
                for s in range(0, len(c), args.batch):
                    c.signals(slice(s, s + args.batch))

            rate, t = _median_rate(len(c), seq, args.repeats)
            add(f"cache read, sequential batches of {args.batch}", rate, t, "e.g. embedding a whole archive")

            rng = np.random.default_rng(0)
            perm = rng.permutation(len(c))
            batches = [np.sort(perm[s:s + args.batch]) for s in range(0, len(c), args.batch)]

            def rand() -> None:
                for b in batches:
                    c.signals(b)

            rate, t = _median_rate(len(c), rand, args.repeats)
            add(f"cache read, random batches of {args.batch}", rate, t, "a shuffled training epoch")

    baseline = rows[0]["records_per_s"]
    for r in rows:
        r["ratio_vs_rdrecord"] = r["records_per_s"] / baseline
    result = {
        "benchmark": "reading",
        "command": "benchmarks/bench_reading.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "data": str(args.data),
        "records": n,
        "repeats": args.repeats,
        "preset": "etp-100hz",
        "cache_mb": round(size_mb, 1),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "loadavg_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None},
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "reading.json").write_text(json.dumps(portable(result), indent=2) + "\n")
    lines = [
        f"# Reading {n} PTB-XL records (100 Hz, preset etp-100hz)",
        "",
        f"Median of {args.repeats} repeats, warm page cache, {os.cpu_count()} CPUs "
        f"(shared machine: load average {result['machine']['loadavg_at_end'][0]:.1f} at the end). "
        f"Cache file: {result['cache_mb']} MB.",
        f"Command: `{result['command']}`",
        "",
        "| method | records/s | x rdrecord | note |",
        "|---|---:|---:|---|",
    ]
    lines += [f"| {r['method']} | {r['records_per_s']:,.0f} | {r['ratio_vs_rdrecord']:.2f} | {r['note']} |" for r in rows]
    (args.out / "reading.md").write_text("\n".join(lines) + "\n")
    return result


if __name__ == "__main__":
    main()
