"""Opening a saved index: the SHA-256 check of every load vs a remembered check (issue 13).

Every ``load_index`` checks the index file (and its ``.ivfdata`` lists) against the sidecar's
SHA-256. ``indexing.verified`` remembers a file this user verified while it stays the same file
(inode, size, mtime, ctime), so a later process skips the hash. This measures what a new
``etp-search query`` process pays to open the index, both ways, in the same run:

    OMP_NUM_THREADS=1 python benchmarks/bench_verify.py --rows 500000 --work /tmp/etp-verify

Data: N synthetic normalised 256-d vectors in a store; two layouts built by the writer's own
code (``build_or_update``): exact (Flat, the index file holds every vector) and IVF-Flat with
on-disk lists (``--ondisk-lists``: the index file is small, the lists file is memory-mapped).
Each open runs in a fresh process (``load_index`` timed inside it, imports excluded), ``--repeats``
times per mode, alternating modes; the page cache is warm for both (the files were just read), so
the "full" figures are the hash at memory speed, a lower bound for a cold disk. Results:
benchmarks/results/verify.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"

_OPEN = """
import json, sys, time
from indexing.index_files import load_index
from indexing.store import EmbeddingStore
store = EmbeddingStore.open(sys.argv[1])
t0 = time.perf_counter()
index, info = load_index(sys.argv[2], store.uuid, len(store), which="ecg")
t1 = time.perf_counter()
_, rows = index.search(store.vectors("ecg", slice(0, 1)), 10)
t2 = time.perf_counter()
print(json.dumps({"open_s": t1 - t0, "first_query_s": t2 - t1, "hit": int(rows[0, 0])}))
"""


def build(work: Path, rows: int, dim: int, ondisk: bool) -> tuple[Path, Path]:
    from indexing.build import store_builder
    from indexing.index_files import build_or_update
    from indexing.store import EmbeddingStore

    name = "ondisk" if ondisk else "flat"
    store_path = work / f"{name}.h5"
    if store_path.exists():
        store = EmbeddingStore.open(store_path)
    else:
        store = EmbeddingStore.create(store_path, dim, {"bench": "verify"}, has_text=False)
        rng = np.random.default_rng(0)
        centres = rng.standard_normal((256, dim)).astype(np.float32)
        for a in range(0, rows, 50_000):
            b = min(rows, a + 50_000)
            x = centres[rng.integers(0, 256, b - a)] + 0.3 * rng.standard_normal((b - a, dim)).astype(np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            store.append([f"r{i}" for i in range(a, b)], x)
    if ondisk:
        build_or_update(store, "ecg", builder=store_builder(max_memory=None, ondisk=True), ondisk=True)
    else:
        build_or_update(store, "ecg", factory="Flat")
    store.close()
    return store_path, Path(f"{store_path}.ecg.faiss")


def open_once(store_path: Path, index_path: Path, mode: str, cache: Path) -> dict:
    env = dict(os.environ, ETP_SEARCH_CACHE=str(cache), OMP_NUM_THREADS="1")
    env.pop("ETP_VERIFY", None)
    if mode == "full":
        env["ETP_VERIFY"] = "full"
    out = subprocess.run([sys.executable, "-c", _OPEN, str(store_path), str(index_path)], env=env,
                         cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=500_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--work", type=Path, default=Path("/tmp/etp-verify"))
    ap.add_argument("--out", type=Path, default=RESULTS / "verify")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    from indexing import verified

    rows_out = []
    for ondisk in (False, True):
        store_path, index_path = build(args.work, args.rows, args.dim, ondisk)
        side = json.loads(Path(f"{index_path}.json").read_text())
        files = [index_path] + ([Path(f"{index_path}.ivfdata")] if "ivfdata" in side else [])
        nbytes = sum(p.stat().st_size for p in files)
        cache = args.work / f"cache-{'ondisk' if ondisk else 'flat'}"
        (cache / verified.RECORD_NAME).unlink(missing_ok=True)
        time.sleep(verified._SETTLE_NS / 1e9 + 0.5)  # the record only takes files older than this
        first = open_once(store_path, index_path, "cached", cache)  # hashes and records
        runs: dict[str, list[dict]] = {"full": [], "cached": []}
        for _ in range(args.repeats):
            for mode in ("full", "cached"):
                runs[mode].append(open_once(store_path, index_path, mode, cache))
        med = {m: statistics.median(r["open_s"] for r in v) for m, v in runs.items()}
        q = {m: statistics.median(r["first_query_s"] for r in v) for m, v in runs.items()}
        rows_out.append({"layout": side["factory"] + (", on-disk lists" if "ivfdata" in side else ""), "rows": args.rows,
                         "bytes_checked": nbytes, "first_open_s": first["open_s"],
                         "open_full_s": med["full"], "open_cached_s": med["cached"],
                         "ratio_full_over_cached": med["full"] / med["cached"],
                         "first_query_full_s": q["full"], "first_query_cached_s": q["cached"],
                         "open_full_all": [r["open_s"] for r in runs["full"]],
                         "open_cached_all": [r["open_s"] for r in runs["cached"]]})
        print(json.dumps(rows_out[-1]), flush=True)
    load = os.getloadavg()
    doc = {"rows": rows_out, "repeats": args.repeats, "dim": args.dim, "loadavg": load,
           "command": "OMP_NUM_THREADS=1 python benchmarks/bench_verify.py " + " ".join(sys.argv[1:])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    md = [f"Opening a saved index in a new process, {args.rows:,} x {args.dim}-d vectors, median of "
          f"{args.repeats} fresh processes per mode (warm page cache; load average "
          f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}).", "",
          "| layout | MB checked | first open (hash + record) s | open, hash every load (ETP_VERIFY=full) s "
          "| open, remembered check s | ratio | first query after open, full / remembered ms |",
          "|---|---|---|---|---|---|---|"]
    for r in rows_out:
        md.append(f"| {r['layout']} | {r['bytes_checked'] / 1e6:.0f} | {r['first_open_s']:.3f} | "
                  f"{r['open_full_s']:.3f} | {r['open_cached_s']:.3f} | {r['ratio_full_over_cached']:.1f}x | "
                  f"{1e3 * r['first_query_full_s']:.1f} / {1e3 * r['first_query_cached_s']:.1f} |")
    md += ["", "Command: `" + doc["command"] + "`"]
    args.out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
