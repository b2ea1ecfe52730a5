"""Robustness benchmark (issue 11): concurrent writers, queries during `index`, kill -9 and resume.

1. **Two writers**: a store holding 1 record; `etp-search index` on the 50 shipped PTB-XL records,
   and after an offset (20 offsets, 0..2 s) `etp-search index` on a 5-record folder into the same
   store. Counts rows, unique ids and each run's exit code / message: duplicates must be 0; a run
   that loses the race exits 1 with one line.
2. **Queries during index**: a writer process appends rows (one small batch at a time, merging,
   compacting and saving index files every few batches) while this process opens the store afresh
   and queries it (with and without a filter) through the read-only `Searcher.search_vector`.
   Counts queries, failures and answers that differ from exact search over the rows the query saw.
3. **kill -9**: `etp-search index` and `etp-search prepare` on the 50 shipped records, SIGKILLed at
   random moments and rerun; the store (ids, vectors) / cache (ids, signals) must equal an
   uninterrupted run.

    .venv/bin/python benchmarks/bench_robustness.py                 # all three, ~10 min on 2 cores
    .venv/bin/python benchmarks/bench_robustness.py --offsets 5 --queries 1000 --kills 3   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._paths import portable  # noqa: E402

EXAMPLE = ROOT / "etp_search" / "examples" / "ptbxl"
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
CLI = [str(Path(sys.executable).with_name("etp-search"))]


def _cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([*CLI, *args], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _subset(dst: Path, ids: list[int]) -> Path:
    """A PTB-XL folder holding only some of the shipped records (same table, fewer signal files)."""
    import pandas as pd

    dst.mkdir(parents=True)
    for name in ("scp_statements.csv", "LICENSE.txt"):
        shutil.copy(EXAMPLE / name, dst / name)
    table = pd.read_csv(EXAMPLE / "ptbxl_database.csv", index_col="ecg_id")
    table.loc[ids].to_csv(dst / "ptbxl_database.csv")
    for rid in ids:
        rel = Path(str(table.loc[rid, "filename_lr"]))
        (dst / rel.parent).mkdir(parents=True, exist_ok=True)
        for ext in (".hea", ".dat"):
            shutil.copy(EXAMPLE / f"{rel}{ext}", dst / f"{rel}{ext}")
    return dst


def _store_ids(path: Path) -> list[str]:
    from indexing.store import EmbeddingStore

    with EmbeddingStore.open(path) as s:
        return s.ids


def two_writers(work: Path, offsets: list[float], ckpt: str) -> dict:
    import pandas as pd

    all_ids = pd.read_csv(EXAMPLE / "ptbxl_database.csv")["ecg_id"].tolist()
    one = _subset(work / "one", all_ids[:1])
    five = _subset(work / "five", all_ids[10:15])
    runs = []
    for j, off in enumerate(offsets):
        store = work / f"w{j}" / "store.h5"
        p = _cli("index", str(one), "--store", str(store), "--checkpoint", ckpt, "--workers", "0")
        assert p.wait() == 0, p.communicate()[1][-500:]
        a = _cli("index", str(EXAMPLE), "--store", str(store), "--checkpoint", ckpt, "--workers", "0",
                 "--batch-size", "8")
        time.sleep(off)
        b = _cli("index", str(five), "--store", str(store), "--checkpoint", ckpt, "--workers", "0")
        (_, ea), (_, eb) = a.communicate(), b.communicate()
        ids = _store_ids(store)
        lines = [e.strip().splitlines()[-1] if e.strip() else "" for e in (ea, eb)]
        runs.append({"offset_s": off, "rows": len(ids), "unique": len(set(ids)), "exit": [a.returncode, b.returncode],
                     "messages": [m for m, c in zip(lines, (a.returncode, b.returncode)) if c]})
        print(f"  offset {off:.2f}s: {len(ids)} rows, {len(set(ids))} unique, exit {a.returncode}/{b.returncode}",
              flush=True)
    return {"offsets": len(runs), "duplicates": sum(r["rows"] - r["unique"] for r in runs),
            "runs_with_duplicates": sum(r["rows"] != r["unique"] for r in runs),
            "non_one_line_failures": sum(1 for r in runs for m in r["messages"] if "error:" not in m), "runs": runs}


WRITER = textwrap.dedent("""
    import sys, numpy as np
    from indexing.store import EmbeddingStore
    from indexing.index_files import build_or_update
    path, n, dim = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    store = EmbeddingStore.open(path)
    store.begin_write()
    rng = np.random.default_rng(1)
    for i in range(len(store), n, 4):
        x = rng.standard_normal((4, dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        store.append([f"r{j}" for j in range(i, i + 4)], x, x, meta={"strat_fold": [(j % 10) + 1 for j in range(i, i + 4)]})
        if (i // 4) % 16 == 15:
            store.compact()
            build_or_update(store, "ecg")
    store.compact()
    build_or_update(store, "ecg")
    store.close()
""")


def queries_during_index(work: Path, n_queries: int, dim: int = 32, rows: int = 6000) -> dict:
    from indexing.index_files import build_or_update
    from indexing.store import EmbeddingStore

    from etp_search.search import Searcher

    path = work / "q" / "store.h5"
    path.parent.mkdir(parents=True)
    rng = np.random.default_rng(0)
    with EmbeddingStore.create(path, dim, {}, unit_norm=True) as s:
        x = rng.standard_normal((40, dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        s.append([f"r{j}" for j in range(40)], x, x, meta={"strat_fold": [(j % 10) + 1 for j in range(40)]})
        build_or_update(s, "ecg")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(rows), str(dim)], env=ENV,
                            stderr=subprocess.PIPE, text=True)
    done = failures = wrong = 0
    errors: dict[str, int] = {}
    t0 = time.perf_counter()
    while done < n_queries:
        try:
            with Searcher.open(path) as s:
                for _ in range(20):
                    q = rng.standard_normal((1, dim)).astype(np.float32)
                    where = ["strat_fold=3"] if done % 2 else []
                    hits = s.search_vector(q, 5, "ecg", where)
                    n = s.view("ecg").n
                    x = s.store.ecg(slice(0, n))
                    sc = x @ (q[0] / np.linalg.norm(q))
                    if where:
                        sc[s.store.meta("strat_fold")[:n] != 3] = -np.inf
                    best = [int(r) for r in np.argsort(-sc, kind="stable")[:5] if np.isfinite(sc[r])]
                    if [h.row for h in hits] != best:
                        wrong += 1
                    done += 1
        except Exception as e:  # noqa: BLE001 - counted: the figure is how many queries fail
            failures += 1
            done += 1
            key = f"{type(e).__name__}: {str(e)[:100]}"
            errors[key] = errors.get(key, 0) + 1
    seconds = time.perf_counter() - t0
    proc.wait(timeout=600)
    return {"queries": done, "failures": failures, "wrong_answers": wrong, "errors": errors,
            "writer_exit": proc.returncode, "rows_at_end": len(_store_ids(path)), "queries_per_s": round(done / seconds, 1)}


def _kill_at_random(args: list[str], seconds: float) -> bool:
    p = _cli(*args)
    time.sleep(seconds)
    if p.poll() is None:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        return True
    p.wait()
    return False


def kill_and_resume(work: Path, kills: int, ckpt: str, seed: int = 0) -> dict:
    from etp_search.signal_cache import SignalCache
    from indexing.store import EmbeddingStore

    rng = np.random.default_rng(seed)
    ref_store, ref_cache = work / "ref" / "store.h5", work / "ref" / "cache.h5"
    t0 = time.perf_counter()
    assert _cli("index", str(EXAMPLE), "--store", str(ref_store), "--checkpoint", ckpt, "--workers", "0",
                "--batch-size", "8").wait() == 0
    t_index = time.perf_counter() - t0
    t0 = time.perf_counter()
    assert _cli("prepare", str(EXAMPLE), "--out", str(ref_cache), "--workers", "0", "--batch-size", "8").wait() == 0
    t_prepare = time.perf_counter() - t0
    with EmbeddingStore.open(ref_store) as s:
        ref_ids, ref_ecg = s.ids, s.ecg()
    with SignalCache.open(ref_cache) as c:
        ref_cids, ref_sig = c.ids, c.signals()
    out = {"index": [], "prepare": []}
    for k in range(kills):
        store = work / f"k{k}" / "store.h5"
        at = float(rng.uniform(0.3, 1.0) * t_index)
        killed = _kill_at_random(["index", str(EXAMPLE), "--store", str(store), "--checkpoint", ckpt,
                                  "--workers", "0", "--batch-size", "8"], at)
        rc = _cli("index", str(EXAMPLE), "--store", str(store), "--checkpoint", ckpt, "--workers", "0",
                  "--batch-size", "8").wait()
        with EmbeddingStore.open(store) as s:
            same = rc == 0 and s.ids == ref_ids and np.allclose(s.ecg(), ref_ecg, atol=1e-5)
        out["index"].append({"kill_at_s": round(at, 2), "killed": killed, "identical": bool(same)})
        cache = work / f"k{k}" / "cache.h5"
        at = float(rng.uniform(0.2, 1.0) * t_prepare)
        killed = _kill_at_random(["prepare", str(EXAMPLE), "--out", str(cache), "--workers", "0", "--batch-size", "8"], at)
        rc = _cli("prepare", str(EXAMPLE), "--out", str(cache), "--workers", "0", "--batch-size", "8").wait()
        with SignalCache.open(cache) as c:
            same = rc == 0 and c.ids == ref_cids and np.array_equal(c.signals(), ref_sig)
        out["prepare"].append({"kill_at_s": round(at, 2), "killed": killed, "identical": bool(same)})
        print(f"  kill {k}: index {out['index'][-1]}, prepare {out['prepare'][-1]}", flush=True)
    return {verb: {"runs": len(r), "killed": sum(x["killed"] for x in r), "identical": sum(x["identical"] for x in r),
                   "runs_detail": r} for verb, r in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--offsets", type=int, default=20)
    ap.add_argument("--queries", type=int, default=5000)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--checkpoint", default=None, help="default: a tiny random checkpoint made here (fast)")
    ap.add_argument("--only", choices=["writers", "queries", "kills"], default=None)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "robustness.json")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-robust-"))
    try:
        ckpt = args.checkpoint
        if ckpt is None:
            import torch

            from etp_search.models import EcgEncoderConfig, EtpConfig, EtpModel, save_checkpoint

            torch.manual_seed(0)
            ckpt = str(work / "tiny")
            save_checkpoint(EtpModel(EtpConfig(ecg=EcgEncoderConfig(name="test_tiny")), load_text=False), ckpt)
        result: dict = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                        "python": platform.python_version()}
        if args.only in (None, "writers"):
            print("two writers at start offsets:", flush=True)
            result["two_writers"] = two_writers(work, list(np.round(np.linspace(0, 2.0, args.offsets), 2)), ckpt)
        if args.only in (None, "queries"):
            print("queries during index:", flush=True)
            result["queries_during_index"] = queries_during_index(work, args.queries)
        if args.only in (None, "kills"):
            print("kill -9 and resume:", flush=True)
            result["kill_and_resume"] = kill_and_resume(work, args.kills, ckpt)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = []
    if "two_writers" in result:
        w = result["two_writers"]
        summary.append(("concurrent writers", f"{w['offsets']} offsets", f"{w['duplicates']} duplicate rows"))
    if "queries_during_index" in result:
        q = result["queries_during_index"]
        summary.append(("queries during index", f"{q['queries']} queries",
                        f"{q['failures']} failures, {q['wrong_answers']} wrong answers"))
    if "kill_and_resume" in result:
        for verb, r in result["kill_and_resume"].items():
            summary.append((f"kill -9 {verb}", f"{r['runs']} runs ({r['killed']} killed)", f"{r['identical']} identical"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.only is None:
        args.out.write_text(json.dumps(portable(result), indent=2) + "\n")
        md = ["| check | runs | outcome |", "|---|---|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in summary]
        args.out.with_suffix(".md").write_text("# bench_robustness\n\n" + "\n".join(md) + "\n")
    if args.json:
        print(json.dumps(portable(result), indent=2))
    else:
        for row in summary:
            print(f"{row[0]:<22} {row[1]:<22} {row[2]}")


if __name__ == "__main__":
    main()
