"""Indexes and the store at 100k / 1M / 5M synthetic 256-d vectors (issue 13).

One run, every configuration in its own subprocess so its peak RSS is its own:

    python benchmarks/bench_scale.py --sizes 100000,1000000,5000000 --work /tmp/etp-scale

Data: clustered, normalised 256-d vectors (1,024 centres on the sphere, a shared 24-d low-rank
spread and small isotropic noise: an embedding-like distribution, so recall means something),
written once to WORK/data.h5 in chunks; each size is a prefix. Queries are fresh draws from the
same mixture, never rows of the data: half calibrate nprobe (smallest reaching recall 0.95),
the other half are held out for the recall and latency figures. Exact top-10 comes from
``indexing.recall.exact_knn`` streamed over the file.

Per size and layout (Flat where it fits, IVF-Flat, IVF-PQ+refine, IVF-PQ+refine with on-disk
lists): build seconds and peak RSS of the build process, index bytes on disk, then in a fresh
process: RSS after opening (lists memory-mapped), nprobe, recall@10, single-query p50/p95 on one
thread. The store (``indexing.store.EmbeddingStore``, public API): append rate in batches of
10,000 rows and read rates (sequential chunks, 1,000 random rows) at each size; then in a fresh
process (``job_ids``) the open, the ids of query hits, the first lookup by id (the id map of
``indexing.idmap``), later lookups, an ``id in A,B`` filter, and as a baseline the dict of every id
the store used to build, from the same read. ``doc["notes"]`` (set when runs are merged) is printed
under the tables. Results: benchmarks/results/scale.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
DIM = 256
CENTRES = 1024
RANK = 24
SPREAD = 0.5  # low-rank spread of norm ~0.9 around a unit centre
NOISE = 0.02  # isotropic noise of norm ~0.3
CHUNK = 100_000
N_QUERIES = 1000
K = 10


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _current_rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _mixture(seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(CENTRES, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    basis = rng.normal(size=(RANK, DIM)).astype(np.float32) / np.sqrt(DIM)
    return centres, basis


def draw(n: int, seed: int) -> np.ndarray:
    """n points of the mixture (deterministic per seed)."""
    centres, basis = _mixture()
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, RANK)).astype(np.float32) * 0.35
    x = centres[rng.integers(0, CENTRES, n)] + z @ basis * SPREAD + rng.normal(size=(n, DIM)).astype(np.float32) * NOISE
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


class Prefix:
    """The first n rows of a dataset, as an array-like (shape + slicing) for indexing.build."""

    def __init__(self, ds, n: int) -> None:
        self.ds, self.shape = ds, (n, int(ds.shape[1]))

    def __getitem__(self, key):
        a, b, _ = key.indices(self.shape[0])
        return self.ds[a:b]


# ------------------------------------------------------------------------------ child jobs


def job_data(work: Path, n: int) -> dict:
    import h5py

    t0 = time.perf_counter()
    path = work / "data.h5"
    tmp = work / "data.h5.tmp"
    with h5py.File(tmp, "w") as f:
        ds = f.create_dataset("x", shape=(n, DIM), dtype="f4", chunks=(4096, DIM))
        for i, a in enumerate(range(0, n, CHUNK)):
            ds[a:a + CHUNK] = draw(min(CHUNK, n - a), seed=1000 + i)
        f.create_dataset("q", data=draw(N_QUERIES, seed=1))
    os.replace(tmp, path)
    return {"rows": n, "seconds": time.perf_counter() - t0, "peak_rss_mb": _rss_mb()}


def job_truth(work: Path, n: int) -> dict:
    import h5py
    import faiss

    from indexing.recall import exact_knn

    faiss.omp_set_num_threads(1)
    t0 = time.perf_counter()
    with h5py.File(work / "data.h5", "r") as f:
        d, i = exact_knn(Prefix(f["x"], n), f["q"][:], K)
    np.save(work / f"truth-{n}.npy", i)
    return {"seconds": time.perf_counter() - t0, "peak_rss_mb": _rss_mb(), "d10_median": float(np.median(d[:, -1]))}


def _paths(work: Path, n: int, kind: str, ondisk: bool) -> Path:
    return work / f"{kind}{'-ondisk' if ondisk else ''}-{n}.index"


def job_build(work: Path, n: int, kind: str, ondisk: bool, threads: int) -> dict:
    import h5py
    import faiss

    from indexing.build import build_index
    from indexing.plan import plan_index

    faiss.omp_set_num_threads(threads)
    out = _paths(work, n, kind, ondisk)
    base_rss = _current_rss_mb()
    t0 = time.perf_counter()
    with h5py.File(work / "data.h5", "r") as f:
        plan = plan_index(n, DIM, kind, ondisk=ondisk)
        index, rep = build_index(Prefix(f["x"], n), plan, out=out, recall_queries=0, use_gpu=False)  # recall: job_query
    seconds = time.perf_counter() - t0
    files = [Path(p) for p in rep["files"]]
    del index
    return {"plan": plan.to_dict(), "build_s": seconds, "train_s": rep.get("train_seconds", 0.0), "add_s": rep["add_seconds"],
            "train_rows": rep.get("train_size", 0), "peak_rss_mb": _rss_mb(), "rss_before_mb": base_rss,
            "index_bytes": sum(p.stat().st_size for p in files), "ram_estimate_bytes": plan.memory_bytes,
            "load_average": round(os.getloadavg()[0], 2), "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "files": [p.name for p in files]}


def job_query(work: Path, n: int, kind: str, ondisk: bool) -> dict:
    import h5py
    import faiss

    from indexing.faiss_index import read_index_file, set_search_params
    from indexing.recall import recall_at_k, tune_nprobe

    faiss.omp_set_num_threads(1)
    with h5py.File(work / "data.h5", "r") as f:
        q = f["q"][:]
    truth = np.load(work / f"truth-{n}.npy")
    cal, held = slice(0, N_QUERIES // 2), slice(N_QUERIES // 2, N_QUERIES)
    rss0 = _current_rss_mb()
    t0 = time.perf_counter()
    index = read_index_file(_paths(work, n, kind, ondisk))
    open_s = time.perf_counter() - t0
    rss_open = _current_rss_mb()
    set_search_params(index, k_factor=16)  # the refine over-fetch of IVF-PQ+refine (ignored by the others)
    nprobe, cal_recall = tune_nprobe(index, q[cal], truth[cal], target=0.95, k=K)
    found = np.empty((N_QUERIES // 2, K), np.int64)
    lat = []
    for j, row in enumerate(range(held.start, held.stop)):
        t = time.perf_counter()
        _, ids = index.search(q[row:row + 1], K)
        lat.append(time.perf_counter() - t)
        found[j] = ids[0]
    batch_t = time.perf_counter()
    index.search(q[held], K)
    batch_s = time.perf_counter() - batch_t
    lat_ms = np.array(lat) * 1e3
    return {"nprobe": nprobe or 0, "k_factor": 16 if kind == "ivf_pq_refine" else None,
            "calibration_recall": cal_recall, "recall_at_10": recall_at_k(found, truth[held], K),
            "p50_ms": float(np.percentile(lat_ms, 50)), "p95_ms": float(np.percentile(lat_ms, 95)),
            "batch_qps": (N_QUERIES // 2) / batch_s, "open_s": open_s,
            "rss_open_mb": rss_open - rss0, "rss_after_queries_mb": _current_rss_mb() - rss0,
            "load_average": round(os.getloadavg()[0], 2), "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "peak_rss_mb": _rss_mb()}


def _seq_read_rate(store, n: int) -> float:
    """Rows/s reading every ECG vector in chunks of 65,536."""
    t = time.perf_counter()
    total = 0
    for a in range(0, n, 65_536):
        total += len(store.ecg(slice(a, min(n, a + 65_536))))
    return total / (time.perf_counter() - t)


def job_store(work: Path, n: int, batch: int = 10_000) -> dict:
    import h5py

    from indexing.store import EmbeddingStore

    path = work / f"store-{n}.h5"
    store = EmbeddingStore.create(path, DIM, {"bench": "scale"}, has_text=False, overwrite=True)
    append_s = 0.0
    per_batch = []
    with h5py.File(work / "data.h5", "r") as f:
        ds = f["x"]
        for a in range(0, n, batch):
            block = ds[a:min(n, a + batch)]
            ids = [f"r{i}" for i in range(a, a + len(block))]
            t = time.perf_counter()
            store.append(ids, block)
            dt = time.perf_counter() - t
            append_s += dt
            per_batch.append(dt)
    store.close()
    t = time.perf_counter()
    store = EmbeddingStore.open(path)
    open_s = time.perf_counter() - t
    seq_rate = _seq_read_rate(store, n)
    rows = np.sort(np.random.default_rng(0).choice(n, 1000, replace=False))
    t = time.perf_counter()
    store.ecg(rows)
    rand_s = time.perf_counter() - t
    one = []
    for r in rows[:200]:
        t = time.perf_counter()
        store.ecg(np.array([r]))
        one.append(time.perf_counter() - t)
    size = path.stat().st_size + sum(p.stat().st_size for p in Path(str(path) + ".parts").glob("*.h5"))
    parts = len(list(Path(str(path) + ".parts").glob("*.h5")))
    # Compaction: fold every tier part into one main file (what `index` does at the end of a run).
    t = time.perf_counter()
    store.compact()
    compact_s = time.perf_counter() - t
    seq_rate_c = _seq_read_rate(store, n)
    store.close()
    quarter = max(1, len(per_batch) // 4)
    return {"rows": n, "append_rows_per_s": n / append_s, "append_s": append_s,
            "first_quarter_batch_ms": 1e3 * float(np.median(per_batch[:quarter])),
            "last_quarter_batch_ms": 1e3 * float(np.median(per_batch[-quarter:])),
            "open_s": open_s, "seq_read_rows_per_s": seq_rate, "random_1000_rows_ms": rand_s * 1e3,
            "one_row_p50_ms": 1e3 * float(np.median(one)), "bytes_on_disk": size, "parts_before_compact": parts,
            "compact_s": compact_s, "compact_rows_per_s": n / compact_s if compact_s > 0 else None,
            "seq_read_rows_per_s_compacted": seq_rate_c, "peak_rss_mb": _rss_mb()}


def job_ids(work: Path, n: int) -> dict:
    """In a fresh process: open the store ``job_store`` left, read the ids of query hits, look up by id."""
    from indexing.store import EmbeddingStore

    rss0 = _current_rss_mb()  # interpreter + numpy + h5py, before the store
    t = time.perf_counter()
    store = EmbeddingStore.open(work / f"store-{n}.h5")
    open_s = time.perf_counter() - t
    open_rss = _current_rss_mb() - rss0
    # A query reads the ids of its k hits only; a lookup by id builds the id -> row map once.
    rng = np.random.default_rng(1)
    at = []
    for _ in range(200):
        hits = rng.choice(n, K, replace=False)
        t = time.perf_counter()
        got = store.ids_at(hits)
        at.append(time.perf_counter() - t)
        assert got == [f"r{int(i)}" for i in hits]
    probe = [f"r{int(i)}" for i in rng.choice(n, 200, replace=False)]
    t = time.perf_counter()
    first_row = store.row_of(probe[0])
    first_lookup_s = time.perf_counter() - t
    assert first_row == int(probe[0][1:])
    map_rss = _current_rss_mb() - rss0
    look = []
    for rid in probe[1:]:
        t = time.perf_counter()
        assert store.row_of(rid) == int(rid[1:])
        look.append(time.perf_counter() - t)
    from indexing.filters import filter_rows

    filt = []
    for rid in probe[:20]:  # an id filter: ids looked up in the map, one mask over the rows
        t = time.perf_counter()
        mask = filter_rows(store, f"id in {rid},nope")
        filt.append(time.perf_counter() - t)
        assert int(mask.sum()) == 1 and mask[int(rid[1:])]
    # Baseline, same process and load: the dict the store used to build (bytes id -> row), from the
    # same chunked read, after the figures above so their RSS is their own.
    rss_b = _current_rss_mb()
    t = time.perf_counter()
    old_map: dict = {}
    for a in range(0, n, 1 << 16):
        b = min(n, a + (1 << 16))
        old_map.update(zip(store._read("ids", slice(a, b), None, object, decode=False).tolist(), range(a, b)))
    dict_s, dict_rss = time.perf_counter() - t, _current_rss_mb() - rss_b
    assert old_map[probe[0].encode()] == first_row
    del old_map
    store.close()
    return {"rows": n, "open_s": open_s, "open_rss_mb": open_rss, "id_filter_p50_ms": 1e3 * float(np.median(filt)),
            "baseline_dict_build_s": dict_s, "baseline_dict_rss_mb": dict_rss, "ids_at_10_p50_ms": 1e3 * float(np.median(at)),
            "ids_at_10_p95_ms": 1e3 * float(np.percentile(at, 95)), "first_id_lookup_s": first_lookup_s,
            "id_map_rss_mb": map_rss, "id_lookup_p50_us": 1e6 * float(np.median(look)),
            "load_average": round(os.getloadavg()[0], 2),
            "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


# ------------------------------------------------------------------------------ driver


def _child(args: list[str], log) -> dict:
    cmd = [sys.executable, __file__, "--child", *args]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or "").strip().splitlines()[-3:]
        out = {"error": f"exit {proc.returncode}: {' | '.join(tail)}"}
    else:
        out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["wall_s"] = time.perf_counter() - t
    print(f"[{time.strftime('%H:%M:%S')}] {' '.join(args)} -> {json.dumps(out)[:300]}", file=log, flush=True)
    return out


def _fits_flat(n: int, max_flat_gb: float) -> bool:
    return n * DIM * 4 <= max_flat_gb * 2**30


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,1000000,5000000")
    ap.add_argument("--work", type=Path, default=Path("/tmp/etp-scale"))
    ap.add_argument("--threads", type=int, default=1, help="FAISS threads for building (queries: 1)")
    ap.add_argument("--max-flat-gb", type=float, default=6.0, help="skip Flat above this many GiB of vectors")
    ap.add_argument("--store-max", type=int, default=5_000_000, help="largest size the store is measured at")
    ap.add_argument("--kinds", default="flat,ivf_flat,ivf_pq_refine,ivf_pq_refine-ondisk")
    ap.add_argument("--out", type=Path, default=RESULTS / "scale.json")
    ap.add_argument("--store-only", action="store_true",
                    help="measure only the store at --sizes (index rows of an earlier run are kept)")
    ap.add_argument("--child", nargs="+")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args()
    if args.child:
        job, work, n, *rest = args.child
        fn = {"data": job_data, "truth": job_truth, "build": job_build, "query": job_query, "store": job_store,
              "ids": job_ids}[job]
        conv = [int(n)]
        if job in ("build", "query"):
            conv += [rest[0], rest[1] == "1"]
            if job == "build":
                conv.append(int(rest[2]))
        print(json.dumps(fn(Path(work), *conv)))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    args.work.mkdir(parents=True, exist_ok=True)
    log = sys.stderr
    doc: dict = {"machine": {"cpus": os.cpu_count(), "note": "2 shared cores, 24 GB RAM; one run, not repeated"},
                 "dim": DIM, "queries": {"calibration": N_QUERIES // 2, "held_out": N_QUERIES // 2}, "k": K,
                 "build_threads": args.threads, "query_threads": 1, "sizes": {}}
    if args.out.exists():
        try:
            doc["sizes"] = json.loads(args.out.read_text()).get("sizes", {})
        except json.JSONDecodeError:
            pass
    doc["data"] = _child(["data", str(args.work), str(max(sizes))], log) if not _has_data(args.work, max(sizes)) else {"reused": True}
    if args.store_only:
        for n in sizes:
            res = doc["sizes"].setdefault(str(n), {"indexes": {}})
            res["store"] = _child(["store", str(args.work), str(n)], log)
            res["ids"] = _child(["ids", str(args.work), str(n)], log) if "error" not in res["store"] else {}
            _remove_store(args.work, n)
            _write(doc, args.out)
        print(args.out.with_suffix(".md").read_text())
        return
    for n in sizes:
        prev = doc["sizes"].get(str(n), {})
        have_truth = (args.work / f"truth-{n}.npy").exists() and "truth" in prev
        res: dict = {"truth": prev["truth"] if have_truth else _child(["truth", str(args.work), str(n)], log),
                     "indexes": dict(prev.get("indexes", {}))}
        doc["sizes"][str(n)] = res
        for spec in [k for k in args.kinds.split(",") if k]:
            kind, ondisk = spec.replace("-ondisk", ""), spec.endswith("-ondisk")
            if kind == "flat" and not _fits_flat(n, args.max_flat_gb):
                res["indexes"][spec] = {"skipped": f"{n * DIM * 4 / 2**30:.1f} GiB of vectors over --max-flat-gb"}
                continue
            b = _child(["build", str(args.work), str(n), kind, "1" if ondisk else "0", str(args.threads)], log)
            q = _child(["query", str(args.work), str(n), kind, "1" if ondisk else "0"], log) if "error" not in b else {}
            res["indexes"][spec] = {"build": b, "query": q}
            _write(doc, args.out)  # after every configuration: a stopped run keeps what it measured
            for p in args.work.glob(f"{kind}{'-ondisk' if ondisk else ''}-{n}.index*"):
                p.unlink()
        if n <= args.store_max:
            res["store"] = _child(["store", str(args.work), str(n)], log)
            res["ids"] = _child(["ids", str(args.work), str(n)], log) if "error" not in res["store"] else {}
            _remove_store(args.work, n)
        doc["sizes"][str(n)] = res
        _write(doc, args.out)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(args.out.with_suffix(".md").read_text())


def _remove_store(work: Path, n: int) -> None:
    for p in work.glob(f"store-{n}.h5*"):
        if p.is_dir():
            for q2 in p.iterdir():
                q2.unlink()
            p.rmdir()
        else:
            p.unlink()


def _has_data(work: Path, n: int) -> bool:
    import h5py

    try:
        with h5py.File(work / "data.h5", "r") as f:
            return f["x"].shape[0] >= n
    except (OSError, KeyError):
        return False


def _write(doc: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    lines = ["# Scale: indexes and the store on synthetic 256-d vectors", "",
             "`python benchmarks/bench_scale.py` (one run; build threads "
             f"{doc['build_threads']}, queries on 1 thread, single-query latency; recall@10 against exact "
             "search on held-out queries, nprobe the smallest reaching 0.95 on separate calibration queries).", "",
             "| rows | index | factory | build s | build peak RSS MB | RAM est. MB | on disk MB | open RSS MB | nprobe | recall@10 | p50 ms | p95 ms |",
             "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for n, res in sorted(doc["sizes"].items(), key=lambda kv: int(kv[0])):
        for spec, r in res["indexes"].items():
            if "skipped" in r:
                lines.append(f"| {int(n):,} | {spec} | - | skipped: {r['skipped']} |  |  |  |  |  |  |  |  |")
                continue
            b, q = r["build"], r.get("query", {})
            if "error" in b or "error" in q:
                lines.append(f"| {int(n):,} | {spec} | - | error: {b.get('error') or q.get('error')} |  |  |  |  |  |  |  |  |")
                continue
            lines.append(
                f"| {int(n):,} | {spec} | `{b['plan']['factory']}` | {b['build_s']:.1f} | {b['peak_rss_mb']:.0f} | "
                f"{b['ram_estimate_bytes'] / 2**20:.0f} | {b['index_bytes'] / 2**20:.0f} | {q['rss_open_mb']:.0f} | "
                f"{q['nprobe']} | {q['recall_at_10']:.3f} | {q['p50_ms']:.2f} | {q['p95_ms']:.2f} |")
    lines += ["", "Store (`EmbeddingStore`, public API, `has_text=False`, batches of 10,000 rows):", "",
              "| rows | append rows/s | batch ms first/last quarter | seq read rows/s | 1,000 random rows ms | one row p50 ms | on disk MB |",
              "|---:|---:|---:|---:|---:|---:|---:|"]
    for n, res in sorted(doc["sizes"].items(), key=lambda kv: int(kv[0])):
        s = res.get("store")
        if not s:
            continue
        if "error" in s:
            lines.append(f"| {int(n):,} | error: {s['error']} |  |  |  |  |  |")
            continue
        lines.append(f"| {int(n):,} | {s['append_rows_per_s']:,.0f} | {s['first_quarter_batch_ms']:.0f} / {s['last_quarter_batch_ms']:.0f} | "
                     f"{s['seq_read_rows_per_s']:,.0f} | {s['random_1000_rows_ms']:.1f} | {s['one_row_p50_ms']:.2f} | {s['bytes_on_disk'] / 2**20:.0f} |")
    comp = [(n, res["store"]) for n, res in sorted(doc["sizes"].items(), key=lambda kv: int(kv[0]))
            if "compact_s" in res.get("store", {})]
    if comp:
        lines += ["", "Compaction (`EmbeddingStore.compact`: every tier part folded into one new main file, written "
                  "aside and renamed; `index` does it at the end of a run), right after the appends above:", "",
                  "| rows | parts before | compact s | rows/s | seq read after compaction rows/s |",
                  "|---:|---:|---:|---:|---:|"]
        for n, s in comp:
            lines.append(f"| {int(n):,} | {s['parts_before_compact']} | {s['compact_s']:.1f} | "
                         f"{s['compact_rows_per_s']:,.0f} | {s['seq_read_rows_per_s_compacted']:,.0f} |")
    ids = [(n, res["ids"]) for n, res in sorted(doc["sizes"].items(), key=lambda kv: int(kv[0]))
           if "ids_at_10_p50_ms" in res.get("ids", {})]
    if ids:
        lines += ["", "Opening the store and looking up ids, in a fresh process (the store reads no ids at open; a "
                  "query reads the ids of its hits; the first lookup by id builds the id -> row map, later ones "
                  "use it; RSS is over the process before the open):", "",
                  "| rows | open s | RSS after open MB | ids of 10 hits p50 / p95 ms | first lookup by id s | "
                  "RSS with the id map MB | lookup by id p50 us | `id in A,B` filter p50 ms | load avg | measured |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for n, s in ids:
            lines.append(f"| {int(n):,} | {s['open_s']:.3f} | {s['open_rss_mb']:.0f} | {s['ids_at_10_p50_ms']:.2f} / "
                         f"{s['ids_at_10_p95_ms']:.2f} | {s['first_id_lookup_s']:.1f} | {s['id_map_rss_mb']:.0f} | "
                         f"{s['id_lookup_p50_us']:.1f} | "
                         + (f"{s['id_filter_p50_ms']:.1f}" if "id_filter_p50_ms" in s else "-")
                         + f" | {s['load_average']} | {s['measured']} |")
    if doc.get("notes"):
        lines += [""] + [str(x) for x in doc["notes"]]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
