"""DDP on CPU (gloo, two processes): one step gives the gradients of one process over the global batch."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from torch import nn

from etp_search.models import EcgEncoderConfig, EtpConfig, EtpModel, TextEncoderConfig
from training.loss import ClipLoss
from training.task import ClipTask

GLOBAL_BATCH = 8


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    return torch.randn(GLOBAL_BATCH, 12, 500, generator=g), torch.randn(GLOBAL_BATCH, 384, generator=g)


def _model() -> EtpModel:
    torch.manual_seed(0)
    # width=384 (MiniLM) lets the workers skip transformers entirely.
    cfg = EtpConfig(ecg=EcgEncoderConfig("test_tiny"), text=TextEncoderConfig(width=384), embed_dim=16)
    model = EtpModel(cfg, load_text=False)
    model.train()
    # BatchNorm statistics are per process under DDP (as in open_clip/timm without SyncBatchNorm,
    # which has no CPU kernel), so the exact-equality check uses the running statistics.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.eval()
    return model


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _worker(rank: int, world: int, init_file: str, out_dir: str, local_loss: bool) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = _model()
        ddp = DDP(model)
        x, t = _inputs()
        shard = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
        task = ClipTask(ddp, ClipLoss(local_loss=local_loss, gather_with_grad=True))
        task({"ecg": x[shard], "text_feats": t[shard]})["loss"].backward()
        save_file(_grads(model), os.path.join(out_dir, f"grads{rank}.safetensors"))
        # Both ranks leave together: a rank tearing gloo down while its peer still talks to it
        # can abort the peer ("terminate called without an active exception").
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # The gradients are on disk. Skip interpreter teardown: in about 1 run of 25 on a 2-core box,
    # C++ destructors of torch's thread pools raced at exit and aborted the child after its work
    # was done ("terminate called without an active exception"), failing a correct run.
    os._exit(0)


@pytest.mark.parametrize("local_loss", [True, pytest.param(False, marks=pytest.mark.slow)])  # ~10-20 s each
def test_two_process_step_equals_one_process_global_batch(tmp_path: Path, local_loss: bool):
    model = _model()
    x, t = _inputs()
    ClipTask(model, ClipLoss())({"ecg": x, "text_feats": t})["loss"].backward()
    want = _grads(model)

    mp.spawn(_worker, args=(2, str(tmp_path / "pg"), str(tmp_path), local_loss), nprocs=2, join=True)
    for rank in (0, 1):
        got = load_file(str(tmp_path / f"grads{rank}.safetensors"))
        assert set(got) == set(want)
        for name in want:
            torch.testing.assert_close(got[name], want[name], atol=1e-6, rtol=1e-4, msg=f"rank {rank} {name}")


@pytest.mark.slow
def test_torchrun_trains_the_same_command(example_ptbxl, tmp_path: Path):
    """`torchrun --nproc_per_node 2 etp-search train ...` runs DDP on gloo to the end; only rank 0 writes."""
    import shutil
    import subprocess
    import sys

    from etp_search.readers import open_dataset
    from etp_search.signal_cache import build_cache

    cache = tmp_path / "example.h5"
    build_cache(open_dataset(example_ptbxl, sampling_rate=100), cache, "etp-100hz", workers=0, progress=False)
    bindir = Path(sys.executable).parent
    torchrun, cli = bindir / "torchrun", bindir / "etp-search"
    if not (torchrun.exists() and cli.exists()):
        pytest.skip("torchrun / etp-search console scripts not installed")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_port", "29561", str(cli), "train", str(cache),
           "--out", str(tmp_path / "run"), "--encoder", "test_tiny", "--epochs", "2", "--batch-size", "16",
           "--train-folds", "10", "--val-folds", "9", "--no-progress", "--json"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "rank 1/2 joined the gloo process group" in res.stderr
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[-1]["step"] == 6  # 48 records / global batch 16
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()
    shutil.rmtree(tmp_path / "run")
