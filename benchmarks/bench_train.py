"""Training throughput at 100 Hz and 500 Hz against the encoder's own forward+backward cost.

For each rate, in one process and interleaved per repeat (so load drift on a shared CPU hits both):
- train: one full optimizer step of `etp-search train` (batch from memory, augmentation, ETP
  forward with cached text features, symmetric CLIP loss, backward, clipping, AdamW, logit clamp);
- encoder: forward + backward of the ECG encoder alone on a batch of the same shape (the floor);
- text tower: pooled MiniLM features of the batch's reports — the per-step cost that the text
  feature cache removes (100 Hz only; it does not depend on the rate).
Medians over repeats; ratio = train samples/s / encoder samples/s (1.0 = no overhead).
Writes benchmarks/results/train.json and train.md.

    .venv/bin/python benchmarks/bench_train.py [--repeats 5] [--steps 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PTBXL = ROOT.parent / "shared" / "data" / "ptbxl"


def _cache(preset: str, rate: int) -> Path:
    from etp_search.readers import open_dataset
    from etp_search.signal_cache import build_cache

    target = ROOT / "etp-data" / f"signals-ptbxl-{preset}.h5"
    if not target.exists():
        build_cache(open_dataset(PTBXL, sampling_rate=rate), target, preset, progress=False)
    return target


def _time(fn, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t0) / steps


def bench_rate(preset: str, rate: int, encoder: str, batch: int, repeats: int, steps: int, threads: int, text: bool) -> dict:
    from training.trainer import Trainer, TrainConfig

    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(cache=str(_cache(preset, rate)), out=tmp, encoder=encoder, batch_size=batch, epochs=1,
                          threads=threads, save_every_steps=0)
        tr = Trainer(cfg, progress=False)
        tr._setup()
        order = next(iter(tr.batches.epoch(0)))
        enc = tr.model.ecg_encoder
        x_shape = tr.train.batch(order).shape
        state = {"step": 0}

        def train_step() -> None:
            tr._optimizer_step(tr._batch(order, state["step"]), state["step"])
            state["step"] += 1

        def encoder_step() -> None:
            x = torch.randn(x_shape)
            enc.zero_grad(set_to_none=True)
            enc(x).sum().backward()

        texts = [tr.train.texts[i] for i in order]

        def text_step() -> None:
            with torch.no_grad():
                tr.model.text_features(texts)

        train_step(), encoder_step()  # warm-up: allocator and oneDNN primitives
        rows = {"train": [], "encoder": [], "text_tower": []}
        for _ in range(repeats):
            rows["train"].append(batch / _time(train_step, steps))
            rows["encoder"].append(batch / _time(encoder_step, steps))
            if text:
                rows["text_tower"].append(batch / _time(text_step, steps))
    med = {k: statistics.median(v) for k, v in rows.items() if v}
    out = {"preset": preset, "fs": rate, "encoder": encoder, "batch": batch, "signal_length": int(x_shape[-1]),
           "train_samples_per_s": med["train"], "encoder_fwd_bwd_samples_per_s": med["encoder"],
           "ratio_train_vs_encoder": med["train"] / med["encoder"], "runs": rows}
    if "text_tower" in med:
        out["text_tower_texts_per_s"] = med["text_tower"]
        # Per-step seconds the cache saves, as a fraction of a cached step.
        out["uncached_text_step_overhead"] = med["train"] / med["text_tower"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoder", default="resnet1d18")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: see TrainConfig.threads)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if not (PTBXL / "ptbxl_database.csv").exists():
        raise SystemExit("needs ../shared/data/ptbxl")
    t0 = time.perf_counter()
    results = [
        bench_rate("etp-100hz", 100, args.encoder, args.batch, args.repeats, args.steps, args.threads, text=True),
        bench_rate("etp-500hz", 500, args.encoder, args.batch, args.repeats, args.steps, args.threads, text=False),
    ]
    doc = {"machine": "2 shared CPU cores, no GPU", "threads": args.threads, "repeats": args.repeats,
           "steps_per_repeat": args.steps, "seconds": time.perf_counter() - t0, "results": results}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "train.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = [f"Training throughput, {args.encoder}, batch {args.batch}, {args.threads} thread(s), median of "
             f"{args.repeats} x {args.steps} steps (2 shared CPU cores).", "",
             "| rate | train step ECG/s | encoder fwd+bwd ECG/s | ratio train/encoder | MiniLM texts/s (uncached) |",
             "|---|---|---|---|---|"]
    for r in results:
        tt = f"{r['text_tower_texts_per_s']:.0f}" if "text_tower_texts_per_s" in r else "—"
        lines.append(f"| {r['fs']} Hz | {r['train_samples_per_s']:.1f} | {r['encoder_fwd_bwd_samples_per_s']:.1f} | "
                     f"{r['ratio_train_vs_encoder']:.2f} | {tt} |")
    (RESULTS / "train.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
