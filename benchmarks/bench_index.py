"""Index benchmark: query latency (search + metadata fetch) of exact vs IVF search, with recall.

For each store size (default 20k, 100k and 1M synthetic normalised 256-d vectors) it writes an
EmbeddingStore, builds the exact index (IndexFlatIP) and the "auto" IVF index (nprobe tuned to
recall@10 >= 0.95 against exact search), then times single queries end to end as the query verb
runs them: FAISS search for k=10 + fetching ids, texts, labels and metadata of the hits from the
store; also with a --where filter (strat_fold=10, ~10 % of rows) applied inside FAISS.
Text encoding of the query is not included (the lead times it separately).

The vectors are a mixture of 1,000 Gaussian clusters (normalised): real ECG embeddings are
class-structured, and uniform random vectors in 256-d are a worst case for IVF that says little
about this use. Figures are medians over repeats; ratios (IVF / exact) are measured in one run.

    .venv/bin/python benchmarks/bench_index.py              # 20k, 100k, 1M (~ a few minutes)
    .venv/bin/python benchmarks/bench_index.py --sizes 20000 100000 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from indexing.build import build_index  # noqa: E402
from indexing.recall import measure_recall  # noqa: E402
from indexing.faiss_index import search  # noqa: E402
from indexing.filters import filter_rows  # noqa: E402
from indexing.store import EmbeddingStore  # noqa: E402

logger = logging.getLogger("bench_index")
DIM = 256
K = 10


def synthetic(n: int, seed: int, sample_seed: int, clusters: int = 1000,
              chunk: int = 100_000) -> tuple[np.ndarray, np.ndarray]:
    """(n, DIM) normalised float32 vectors and their cluster ids, generated in chunks.

    ``seed`` fixes the cluster centres, ``sample_seed`` the points drawn around them.
    """
    centres = np.random.default_rng(seed).standard_normal((clusters, DIM)).astype(np.float32)
    rng = np.random.default_rng(sample_seed)
    x = np.empty((n, DIM), np.float32)
    lab = rng.integers(0, clusters, n)
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        x[a:b] = centres[lab[a:b]] + 0.8 * rng.standard_normal((b - a, DIM)).astype(np.float32)
    faiss.normalize_L2(x)
    return x, lab


def write_store(path: Path, x: np.ndarray, lab: np.ndarray, batch: int = 50_000) -> dict:
    rng = np.random.default_rng(1)
    n = len(x)
    t0 = time.perf_counter()
    store = EmbeddingStore.create(path, DIM, {"checkpoint_sha256": "bench"}, has_text=False)
    for a in range(0, n, batch):
        b = min(n, a + batch)
        store.append([f"rec{i:07d}" for i in range(a, b)], x[a:b],
                     texts=[f"synthetic report of cluster {c}" for c in lab[a:b]],
                     labels=[{f"C{c}": 100.0} for c in lab[a:b]],
                     meta={"age": rng.uniform(18, 95, b - a).round(), "sex": rng.integers(0, 2, b - a),
                           "strat_fold": rng.integers(1, 11, b - a), "source": [f"records/{i}" for i in range(a, b)]})
    write_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    store.compact()
    compact_s = time.perf_counter() - t0
    store.close()
    store = EmbeddingStore.open(path)
    t0 = time.perf_counter()
    back = store.ecg()
    read_s = time.perf_counter() - t0
    assert back.shape == x.shape
    return {"store": store, "write_s": write_s, "compact_s": compact_s, "read_ecg_s": read_s,
            "read_gb_per_s": back.nbytes / 1e9 / read_s}


def fetch(store: EmbeddingStore, rows: np.ndarray) -> list[dict]:
    """What the query verb shows per hit."""
    rows = rows[rows >= 0]
    ids, texts, labels = store.ids_at(rows), store.texts(rows), store.labels(rows)
    meta = {c: store.meta(c, rows) for c in ("age", "sex", "strat_fold", "source")}
    return [{"id": ids[i], "text": texts[i], "labels": labels[i], **{c: meta[c][i] for c in meta}}
            for i in range(len(rows))]


def latency(index, store: EmbeddingStore, queries: np.ndarray, repeats: int, where: str | None) -> dict:
    """Per-query wall time (ms) of filter + search + fetch; p50/p95 pooled over repeats."""
    times, per_repeat_p50 = [], []
    for _ in range(repeats):
        rep = []
        for q in queries:
            t0 = time.perf_counter()
            mask = filter_rows(store, where) if where else None
            _, rows = search(index, q[None], K, mask)
            fetch(store, rows[0])
            rep.append((time.perf_counter() - t0) * 1e3)
        per_repeat_p50.append(float(np.median(rep)))
        times += rep
    return {"p50_ms": round(float(np.median(per_repeat_p50)), 3), "p95_ms": round(float(np.percentile(times, 95)), 3),
            "n_queries": len(queries), "repeats": repeats}


def t0_threads(args: argparse.Namespace) -> int:
    """Thread count whose latencies are the headline figures (the first of --query-threads)."""
    return args.query_threads[0]


def run_size(n: int, args: argparse.Namespace, workdir: Path) -> dict:
    logger.info("n=%d: generating and writing the store", n)
    x, lab = synthetic(n, seed=0, sample_seed=n)
    st = write_store(workdir / f"store{n}.h5", x, lab)
    store = st.pop("store")
    # Held-out queries: new points from the same clusters (not rows of the store).
    qx, _ = synthetic(args.queries, seed=0, sample_seed=10**9 + n)
    out: dict = {"n": n, "dim": DIM, "store": {k: round(v, 3) for k, v in st.items()}}
    ecg = store.ecg()
    for name, factory in (("exact", "Flat"), ("ivf", "auto")):
        t0 = time.perf_counter()
        index, info = build_index(ecg, factory=factory, ivf_threshold=0, seed=0)
        build_s = time.perf_counter() - t0
        row = {"factory": info["factory"], "build_s": round(build_s, 3), "recall_at_10": info["recall_at_10"],
               "nprobe": info.get("nprobe"), "nlist": info.get("nlist")}
        if name == "ivf":  # recall on queries other than the build's (held-out rows, another seed)
            row["recall_at_10_recheck"] = round(measure_recall(index, ecg, nq=200, seed=5), 4)
        for t in args.query_threads:
            faiss.omp_set_num_threads(t)
            row[f"query_t{t}"] = latency(index, store, qx, args.repeats, None)
            row[f"query_where_fold10_t{t}"] = latency(index, store, qx[: max(5, len(qx) // 2)], args.repeats,
                                                      "strat_fold=10")
        faiss.omp_set_num_threads(args.threads)
        row["query"], row["query_where_fold10"] = row[f"query_t{t0_threads(args)}"], \
            row[f"query_where_fold10_t{t0_threads(args)}"]
        out[name] = row
        logger.info("n=%d %s: build %.1fs, p50 %.2f ms, recall %.3f", n, name, build_s, row["query"]["p50_ms"],
                    row["recall_at_10"])
        del index
    out["ratio_ivf_over_exact_p50"] = round(out["ivf"]["query"]["p50_ms"] / out["exact"]["query"]["p50_ms"], 3)
    out["ratio_ivf_over_exact_p50_where"] = round(
        out["ivf"]["query_where_fold10"]["p50_ms"] / out["exact"]["query_where_fold10"]["p50_ms"], 3)
    store.close()
    return out


def markdown(res: dict) -> str:
    lines = [
        "# Index benchmark",
        "",
        f"{res['machine']}; faiss {res['faiss_version']} (build {res['threads']} threads, queries "
        f"{res['query_threads'][0]} thread unless said); d={DIM}, k={K}; "
        f"synthetic clustered normalised vectors; single queries, search + metadata fetch "
        f"(text encoding not included); p50 = median over {res['repeats']} repeats.",
        "",
        "| rows | index | build s | recall@10 | nprobe/nlist | p50 ms | p95 ms | p50 ms with where "
        "| p50 ms, 2 threads | IVF/exact p50 |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["results"]:
        for name in ("exact", "ivf"):
            e = r[name]
            ratio = "" if name == "exact" else f"{r['ratio_ivf_over_exact_p50']:.3f} ({r['ratio_ivf_over_exact_p50_where']:.2f} where)"
            probe = f"{e['nprobe']}/{e['nlist']}" if e.get("nlist") else "-"
            lines.append(f"| {r['n']:,} | {e['factory']} | {e['build_s']:.1f} | {e['recall_at_10']:.3f} | {probe} | "
                         f"{e['query']['p50_ms']:.2f} | {e['query']['p95_ms']:.2f} | "
                         f"{e['query_where_fold10']['p50_ms']:.2f} | {e.get('query_t2', {}).get('p50_ms', float('nan')):.2f} "
                     f"| {ratio} |")
    lines += ["", "Store (HDF5, whole-batch crash-safe parts, then compact):", "",
              "| rows | append s | compact s | read all ECG vectors s | GB/s |", "|---:|---:|---:|---:|---:|"]
    for r in res["results"]:
        s = r["store"]
        lines.append(f"| {r['n']:,} | {s['write_s']:.1f} | {s['compact_s']:.1f} | {s['read_ecg_s']:.2f} | "
                     f"{s['read_gb_per_s']:.2f} |")
    lines += ["", "Data: 1,000 well-separated Gaussian clusters, so a query's true neighbours share its IVF list "
              "and small nprobe already reaches the recall target; on less clustered embeddings the tuned "
              "nprobe (and IVF latency) is higher - the recall column is measured, not assumed.",
              "", "Single-query latency with 2 OpenMP threads is dominated by thread wake-ups on this shared, "
              "loaded 2-core box; 1 thread is the figure to plan with here.", "",
              f"Command: `{res['command']}`", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000, 1_000_000])
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="OpenMP threads for building")
    ap.add_argument("--query-threads", type=int, nargs="+", default=[1, 2],
                    help="OpenMP thread counts to time queries with; the first is the headline")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--workdir", type=Path, default=None, help="where the temporary stores go")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    faiss.omp_set_num_threads(args.threads)
    workdir = Path(tempfile.mkdtemp(prefix="bench_index_", dir=args.workdir))
    try:
        results = [run_size(n, args, workdir) for n in args.sizes]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    res = {"benchmark": "index", "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
           "faiss_version": faiss.__version__, "threads": args.threads,
           "query_threads": args.query_threads, "repeats": args.repeats,
           "command": "python benchmarks/bench_index.py " + " ".join(sys.argv[1:]), "results": results}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "index.json").write_text(json.dumps(res, indent=2))
    (args.out / "index.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
