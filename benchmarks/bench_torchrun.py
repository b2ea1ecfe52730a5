"""`etp-search index` under torchrun vs one process, on real records, with the shipped checkpoint.

    python benchmarks/bench_torchrun.py [--data ../shared/data/ptbxl] [--nproc 2] [--die-after 3]

Three runs into fresh stores, each through the real CLI (`python -m etp_search index`):
  1. one process (the reference);
  2. `torchrun --nproc-per-node N` (gloo on CPU): each rank embeds its shard, rank 0 merges;
  3. the same torchrun run with rank 1 made to exit after `--die-after` batches
     (ETP_INDEX_TEST_DIE_AFTER), then the same command again, which must resume and finish.
Each torchrun store is compared with the reference: same ids in the same order, ECG and report
vectors allclose (largest difference reported). Writes benchmarks/results/torchrun.{json,md}.
On a 2-core machine the wall times show the cost of the extra processes, not a speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._paths import ROOT, portable  # noqa: E402
from indexing.store import EmbeddingStore  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _index(data: Path, store: Path, nproc: int, args: argparse.Namespace, **env: str) -> dict:
    base = ["-m", "etp_search", "index", str(data), "--store", str(store), "--batch-size", str(args.batch_size),
            "--workers", str(args.workers), "--device", "cpu", "--json"]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               "--master-addr", "127.0.0.1", "--master-port", str(_port()), *base]
    else:
        cmd = [sys.executable, *base]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **env}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env)
    wall = time.perf_counter() - t0
    summary = None
    start = proc.stdout.find("\n{") + 1 if not proc.stdout.startswith("{") else 0
    if proc.stdout.startswith("{") or start > 0:  # --json prints one (indented) object, rank 0 only
        try:
            summary = json.loads(proc.stdout[start:])
        except json.JSONDecodeError:
            summary = None
    return {"rc": proc.returncode, "wall_s": round(wall, 1), "summary": summary,
            "stderr_tail": proc.stderr.strip().splitlines()[-1:] if proc.returncode else []}


def _compare(ref: Path, other: Path) -> dict:
    with EmbeddingStore.open(ref) as a, EmbeddingStore.open(other) as b:
        same_ids = list(a.ids) == list(b.ids)
        out = {"rows": len(b), "same_ids_in_order": same_ids}
        if same_ids:
            out["max_abs_diff_ecg"] = float(np.abs(a.ecg() - b.ecg()).max())
            out["max_abs_diff_text"] = float(np.abs(a.text() - b.text()).max())
            out["allclose_1e-5"] = bool(out["max_abs_diff_ecg"] <= 1e-5 and out["max_abs_diff_text"] <= 1e-5)
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "ptbxl")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--die-after", type=int, default=3, help="batches rank 1 writes before it is made to exit")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if not args.data.exists():
        sys.exit(f"error: {args.data} not found; pass --data DATASET_FOLDER")

    tmp = Path(tempfile.mkdtemp(prefix="etp-torchrun-"))
    try:
        one = _index(args.data, tmp / "one.h5", 1, args)
        dist = _index(args.data, tmp / "dist.h5", args.nproc, args)
        killed = _index(args.data, tmp / "resumed.h5", args.nproc, args, ETP_INDEX_TEST_DIE_AFTER=f"1:{args.die_after}")
        with EmbeddingStore.open(tmp / "resumed.h5") as s:
            rows_after_kill = len(s)
        shards_after_kill = sorted(p.name for p in tmp.glob("resumed.h5.rank*") if p.suffix not in (".lock", ".parts"))
        resumed = _index(args.data, tmp / "resumed.h5", args.nproc, args)
        result = {
            "command": "python benchmarks/bench_torchrun.py " + " ".join(sys.argv[1:]),
            "data": str(args.data), "nproc": args.nproc, "cpus": os.cpu_count(),
            "one_process": one, "torchrun": dist, "torchrun_vs_one": _compare(tmp / "one.h5", tmp / "dist.h5"),
            "killed_run": {**killed, "main_store_rows_after": rows_after_kill, "shards_left": shards_after_kill},
            "rerun_after_kill": resumed, "resumed_vs_one": _compare(tmp / "one.h5", tmp / "resumed.h5"),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "torchrun.json").write_text(json.dumps(portable(result), indent=2))

    def row(name: str, run: dict, cmp: dict | None) -> str:
        s = run["summary"] or {}
        c = cmp or {}
        return (f"| {name} | {run['rc']} | {run['wall_s']} | {s.get('written', '')} | {c.get('rows', '')} | "
                f"{c.get('same_ids_in_order', '')} | {c.get('max_abs_diff_ecg', ''):.1e} | {c.get('max_abs_diff_text', ''):.1e} |"
                if c.get("same_ids_in_order") else
                f"| {name} | {run['rc']} | {run['wall_s']} | {s.get('written', '')} | {c.get('rows', '')} | "
                f"{c.get('same_ids_in_order', '')} | | |")

    md = [f"# `index` under torchrun ({args.nproc} gloo CPU processes) vs one process", "",
          f"Command: `{result['command']}`; data `{portable(str(args.data))}`, shipped checkpoint, {os.cpu_count()} CPUs.", "",
          "| run | exit | wall s | written | rows | same ids, same order | max abs diff ECG | max abs diff report |",
          "|---|---:|---:|---:|---:|---|---:|---:|",
          row("one process (reference)", one, {"rows": (one["summary"] or {}).get("rows", "")}),
          row(f"torchrun x{args.nproc}", dist, result["torchrun_vs_one"]),
          f"| torchrun x{args.nproc}, rank 1 exits after {args.die_after} batches | {killed['rc']} | {killed['wall_s']} | | "
          f"{rows_after_kill} in the store; shards kept: {', '.join(shards_after_kill) or 'none'} | | | |",
          row("the same command again (resume)", resumed, result["resumed_vs_one"]), ""]
    (args.out / "torchrun.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
