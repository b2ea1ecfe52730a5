"""Robustness benchmark (issue 11): concurrent writers, queries during `index`, kill -9 and resume.

1. **Two writers**: a store holding 1 record; `etp-search index` on the 50 shipped PTB-XL records,
   and after an offset (20 offsets, 0..2 s) `etp-search index` on a 5-record folder into the same
   store. Counts rows, unique ids and each run's exit code / message: duplicates must be 0; a run
   that loses the race exits 1 with one line.
2. **Queries during index**: a writer process appends rows (one small batch at a time, merging,
   compacting and saving index files every few batches) while this process opens the store afresh
   and queries it (with and without a filter) through the read-only `Searcher.search_vector`.
   Counts queries, failures and answers that differ from exact search over the rows the query saw.
3. **kill -9**: `etp-search index` and `etp-search prepare` on the 50 shipped records, and
   `etp-search train` on their signal cache (tiny encoder, 6 epochs), SIGKILLed at random moments
   and rerun as the user is told to (`train --resume RUN` once the run folder holds a run, else the
   same command); the store (ids, vectors) / cache (ids, signals) / run (best/ and last/ weights,
   metrics.jsonl) must equal an uninterrupted run. Training resumes from its last saved state and
   redoes the lost steps with the same seeded batches, so the weights must match to 1e-6 (the same
   bound tests/test_training.py holds); the largest difference is recorded.

    .venv/bin/python benchmarks/bench_robustness.py                 # all three, ~35 min on 2 busy cores
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
CLI = [sys.executable, "-m", "etp_search"]


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
        lines = [e.strip().splitlines()[-1].replace(str(work), "<tmp>") if e.strip() else "" for e in (ea, eb)]
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


def _run_timed(args: list[str], marker: Path) -> tuple[float, float]:
    """Run a verb to the end: (seconds in all, seconds until ``marker`` appeared: its work began)."""
    p = _cli(*args)
    t0 = time.perf_counter()
    seen = None
    while p.poll() is None:
        if seen is None and marker.exists():
            seen = time.perf_counter() - t0
        time.sleep(0.02)
    total = time.perf_counter() - t0
    err = p.communicate()[1]
    assert p.returncode == 0, err[-800:]
    return total, total if seen is None else seen


def _kill_at_random(args: list[str], marker: Path, after: float) -> bool:
    """Start a verb, SIGKILL it ``after`` seconds into its work (counted from ``marker`` appearing:
    the store, the cache's .partial, the run's train_config.json); False if it finished first."""
    p = _cli(*args)
    while p.poll() is None and not marker.exists():
        time.sleep(0.01)
    time.sleep(after)
    killed = p.poll() is None
    if killed:
        os.kill(p.pid, signal.SIGKILL)
    p.communicate()
    return killed


TRAIN = ["--encoder", "test_tiny", "--epochs", "6", "--batch-size", "8", "--embed-dim", "16", "--train-folds", "10",
         "--val-folds", "9", "--no-progress", "--threads", "1", "--seed", "3"]


def _run_result(run: Path) -> tuple[dict, list[dict]]:
    from safetensors.numpy import load_file

    weights = {f"{sub}/{k}": v for sub in ("best", "last") for k, v in load_file(str(run / sub / "model.safetensors")).items()}
    return weights, [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _same_run(run: Path, ref: tuple[dict, list[dict]]) -> tuple[bool, float]:
    """Equal best/ and last/ weights (to 1e-6) and validation figures (to 1e-5); the largest weight difference."""
    try:
        weights, hist = _run_result(run)
    except (OSError, ValueError) as e:
        print(f"    run {run} unreadable: {e}", flush=True)
        return False, float("inf")
    ref_w, ref_h = ref
    if weights.keys() != ref_w.keys() or len(hist) != len(ref_h):
        return False, float("inf")
    diff = max(float(np.max(np.abs(weights[k].astype(np.float64) - ref_w[k]), initial=0.0)) for k in ref_w)
    figures = all(abs(a[k] - b[k]) <= 1e-5 for a, b in zip(hist, ref_h) for k in ("val_loss", "train_loss"))
    return diff <= 1e-6 and figures, diff


def _rerun(args: list[str]) -> tuple[int, str]:
    p = _cli(*args)
    _, err = p.communicate()
    return p.returncode, (err.strip().splitlines() or [""])[-1]


def kill_and_resume(work: Path, kills: int, ckpt: str, seed: int = 0, verbs: tuple[str, ...] = ("index", "prepare", "train")) -> dict:
    from etp_search.signal_cache import SignalCache
    from indexing.store import EmbeddingStore

    rng = np.random.default_rng(seed)
    ref_store, ref_cache, ref_run = work / "ref" / "store.h5", work / "ref" / "cache.h5", work / "ref" / "run"

    def index_args(store: Path) -> list[str]:
        return ["index", str(EXAMPLE), "--store", str(store), "--checkpoint", ckpt, "--workers", "0", "--batch-size", "8"]

    def prepare_args(cache: Path) -> list[str]:
        return ["prepare", str(EXAMPLE), "--out", str(cache), "--workers", "0", "--batch-size", "8"]

    def train_args(run: Path) -> list[str]:
        return ["train", str(ref_cache), "--out", str(run), *TRAIN]

    def marker(verb: str, target: Path) -> Path:
        return {"index": target, "prepare": target.with_name(target.name + ".partial"),
                "train": target / "train_config.json"}[verb]

    window = {}  # seconds of work after the marker, in the uninterrupted run (prepare first: train reads its cache)
    for verb, target in (("prepare", ref_cache), ("index", ref_store), ("train", ref_run)):
        args = {"index": index_args, "prepare": prepare_args, "train": train_args}[verb](target)
        total, start = _run_timed(args, marker(verb, target))
        window[verb] = total - start
    print("  uninterrupted, seconds of work after start-up: " + ", ".join(f"{v} {t:.1f}" for v, t in window.items()),
          flush=True)
    with EmbeddingStore.open(ref_store) as s:
        ref_ids, ref_ecg = s.ids, s.ecg()
    with SignalCache.open(ref_cache) as c:
        ref_cids, ref_sig = c.ids, c.signals()
    ref_result = _run_result(ref_run)

    def same_store(store: Path) -> bool:
        with EmbeddingStore.open(store) as s:
            return s.ids == ref_ids and np.allclose(s.ecg(), ref_ecg, atol=1e-5)

    def same_cache(cache: Path) -> bool:
        with SignalCache.open(cache) as c:
            return c.ids == ref_cids and np.array_equal(c.signals(), ref_sig)

    out: dict[str, list] = {v: [] for v in verbs}
    for k in range(kills):
        for verb in verbs:
            # A moment drawn uniformly over the work; a run that finished first is redone (in a new
            # folder) with half the delay.
            at, tries, killed = float(rng.uniform(0.0, 1.0) * window[verb]), 0, False
            while not killed and tries < 5:
                tries += 1
                target = work / f"k{k}-{tries}" / {"index": "store.h5", "prepare": "cache.h5", "train": "run"}[verb]
                args = {"index": index_args, "prepare": prepare_args, "train": train_args}[verb](target)
                killed = _kill_at_random(args, marker(verb, target), at)
                at_used, at = at, at / 2
            again = args
            had_state = verb == "train" and (target / "resume" / "latest.json").is_file()
            if verb == "train" and (target / "train_config.json").is_file():
                # What the user is told: --resume once the folder holds a run, else the same command again.
                again = ["train", "--resume", str(target), "--no-progress"]
            rc, err = _rerun(again)
            row: dict = {"kill_after_start_s": round(at_used, 2), "tries": tries, "killed": killed, "rerun_exit": rc}
            if rc:
                row["rerun_error"] = err
                same = False
            elif verb == "train":
                same, row["max_weight_diff"] = _same_run(target, ref_result)
                row["resumed"] = again is not args
                row["from_saved_state"] = had_state
            else:
                same = same_store(target) if verb == "index" else same_cache(target)
            row["identical"] = bool(same)
            out[verb].append(row)
        print(f"  kill {k}: " + ", ".join(f"{v} {out[v][-1]}" for v in verbs), flush=True)
    return {verb: {"runs": len(r), "killed": sum(x["killed"] for x in r), "identical": sum(x["identical"] for x in r),
                   **({"max_weight_diff": max(x.get("max_weight_diff", float("inf")) for x in r)} if verb == "train" else {}),
                   "runs_detail": r} for verb, r in out.items()}


def _summary(result: dict) -> list[tuple[str, str, str]]:
    rows = []
    if "two_writers" in result:
        w = result["two_writers"]
        rows.append(("concurrent `index` runs", f"{w['offsets']} start offsets",
                     f"{w['duplicates']} duplicate rows; {w['non_one_line_failures']} failures without a one-line error"))
    if "queries_during_index" in result:
        q = result["queries_during_index"]
        rows.append(("queries during index", f"{q['queries']} queries",
                     f"{q['failures']} failures, {q['wrong_answers']} wrong answers"))
    for verb, r in result.get("kill_and_resume", {}).items():
        extra = ""
        if "max_weight_diff" in r:
            resumed = sum(x.get("resumed", False) for x in r["runs_detail"])
            state = sum(x.get("from_saved_state", False) for x in r["runs_detail"])
            extra = (f" ({resumed} via --resume, {state} of them from a saved mid-run state; "
                     f"largest weight difference {r['max_weight_diff']:.1e})")
        rows.append((f"kill -9 `{verb}` + rerun", f"{r['runs']} runs ({r['killed']} killed mid-run)",
                     f"{r['identical']} identical to an uninterrupted run{extra}"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--offsets", type=int, default=20)
    ap.add_argument("--queries", type=int, default=5000)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--verbs", default="index,prepare,train", help="verbs --only kills interrupts (comma-separated)")
    ap.add_argument("--checkpoint", default=None, help="default: a tiny random checkpoint made here (fast)")
    ap.add_argument("--only", choices=["writers", "queries", "kills"], default=None,
                    help="run one piece; its figures replace that piece's in an existing --out")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "robustness.json")
    args = ap.parse_args()
    verbs = tuple(v for v in args.verbs.split(",") if v)
    if not set(verbs) <= {"index", "prepare", "train"}:
        ap.error(f"--verbs takes index, prepare and train; got {args.verbs!r}")
    work = Path(tempfile.mkdtemp(prefix="bench-robust-"))
    try:
        ckpt = args.checkpoint
        if ckpt is None:
            import torch

            from etp_search.models import EcgEncoderConfig, EtpConfig, EtpModel, save_checkpoint

            torch.manual_seed(0)
            ckpt = str(work / "tiny")
            save_checkpoint(EtpModel(EtpConfig(ecg=EcgEncoderConfig(name="test_tiny")), load_text=False), ckpt)
        result: dict = {}
        runs: dict = {}
        pieces = {
            "two_writers": ("writers", "two writers at start offsets:",
                            lambda: two_writers(work, list(np.round(np.linspace(0, 2.0, args.offsets), 2)), ckpt)),
            "queries_during_index": ("queries", "queries during index:", lambda: queries_during_index(work, args.queries)),
            "kill_and_resume": ("kills", "kill -9 and resume:", lambda: kill_and_resume(work, args.kills, ckpt, verbs=verbs)),
        }
        for key, (name, title, fn) in pieces.items():
            if args.only in (None, name):
                print(title, flush=True)
                load, t0 = os.getloadavg()[0], time.perf_counter()
                result[key] = fn()
                runs[key] = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                             "python": platform.python_version(), "seconds": round(time.perf_counter() - t0, 1),
                             "load_average_1min": [round(load, 2), round(os.getloadavg()[0], 2)],
                             "command": " ".join(["benchmarks/bench_robustness.py", *sys.argv[1:]])}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["runs"] = runs
    if args.only is not None and args.out.is_file():
        old = json.loads(args.out.read_text())
        result = {**old, **result, "runs": {**old.get("runs", {}), **result["runs"]}}
    result = {k: result[k] for k in ("two_writers", "queries_during_index", "kill_and_resume", "runs") if k in result}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(portable(result), indent=2) + "\n")
    lines = ["# bench_robustness", "",
             "Each piece's command, machine, seconds and 1-minute load average (start, end) are in robustness.json "
             "under `runs`; the machine is 2 cores shared with other agents' jobs. tests/test_store_concurrency.py "
             "runs two writer processes at 10 offsets on every suite run.", "",
             "| check | runs | outcome |", "|---|---|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in _summary(result)]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    if args.json:
        print(json.dumps(portable(result), indent=2))
    else:
        for row in _summary(result):
            print(f"{row[0]:<26} {row[1]:<30} {row[2]}")


if __name__ == "__main__":
    main()
