"""`etp-search index` under torchrun (2 gloo CPU processes) gives the store of one process, and resumes
after a rank is killed mid-run. Real launcher (``torch.distributed.run``), real shipped PTB-XL records."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from etp_search.export import index_data
from etp_search.export import runner as runner_mod
from etp_search.export.shards import DIE_ENV, existing_shards
from etp_search.models import EcgEncoderConfig, EtpConfig, EtpModel, save_checkpoint
from indexing.store import EmbeddingStore

slow = pytest.mark.slow  # launches of two processes that each load the text tower


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_checkpoint(EtpModel(EtpConfig(ecg=EcgEncoderConfig(name="test_tiny")), load_text=False), path)
    return path


@pytest.fixture(scope="module")
def single(tmp_path_factory, ckpt, example_ptbxl) -> Path:
    store = tmp_path_factory.mktemp("one") / "store.h5"
    index_data(example_ptbxl, store, ckpt, batch_size=8, workers=0, device="cpu", progress=False)
    return store


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(store: Path, ckpt: Path, data: Path, **env: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
           "-m", "etp_search", "index", str(data), "--store", str(store), "--checkpoint", str(ckpt),
           "--batch-size", "8", "--workers", "0", "--device", "cpu", "--json"]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **env}
    return subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=600)


def _same_store(a: Path, b: Path) -> None:
    with EmbeddingStore.open(a) as x, EmbeddingStore.open(b) as y:
        assert x.ids == y.ids and len(x) == 50
        np.testing.assert_allclose(x.ecg(), y.ecg(), atol=1e-5)
        np.testing.assert_allclose(x.text(), y.text(), atol=1e-5)
        assert x.texts() == y.texts() and x.labels() == y.labels()
        assert x.meta("strat_fold").tolist() == y.meta("strat_fold").tolist()


@slow
def test_two_gloo_ranks_give_the_store_of_one_process(tmp_path, ckpt, example_ptbxl, single):
    store = tmp_path / "store.h5"
    run = _torchrun(store, ckpt, example_ptbxl)
    assert run.returncode == 0, run.stderr[-3000:]
    _same_store(store, single)
    assert existing_shards(store) == []  # merged shard stores are removed
    # Rank 1 leaves the process group only after rank 0 has merged (destroying the group is
    # collective; a rank leaving early can make gloo abort the one still working).
    assert run.stderr.index("rank 1/2: leaving the process group") > run.stderr.index("merged 50 rows"), run.stderr[-2000:]
    summary = json.loads(run.stdout)  # rank 0 alone prints the job's summary
    assert summary["written"] == 50 and summary["rows"] == 50 and summary["records_found"] == 50
    assert summary["ecg_index"]["n_rows"] == 50 and summary["text_index"]["n_rows"] == 50


@slow
def test_rank_killed_mid_run_then_rerun_completes_to_the_same_store(tmp_path, ckpt, example_ptbxl, single):
    store = tmp_path / "store.h5"
    run = _torchrun(store, ckpt, example_ptbxl, **{DIE_ENV: "1:1"})
    assert run.returncode != 0
    shards = existing_shards(store)
    assert [p.name for p in shards] == ["store.h5.rank0-of-2", "store.h5.rank1-of-2"]
    with EmbeddingStore.open(shards[1]) as s:
        assert len(s) == 8  # rank 1 kept its first batch, nothing more
    with EmbeddingStore.open(store) as s:
        assert len(s) == 0  # nothing merged before every shard was complete
    again = _torchrun(store, ckpt, example_ptbxl)
    assert again.returncode == 0, again.stderr[-3000:]
    _same_store(store, single)
    assert existing_shards(store) == []


@slow
def test_one_process_finishes_what_a_killed_torchrun_left(tmp_path, ckpt, example_ptbxl, single, monkeypatch):
    store = tmp_path / "store.h5"
    assert _torchrun(store, ckpt, example_ptbxl, **{DIE_ENV: "1:1"}).returncode != 0
    in_shards = 0
    for p in existing_shards(store):
        with EmbeddingStore.open(p) as s:
            in_shards += len(s)
    assert in_shards >= 8
    embedded = {"n": 0}
    real_ecg = runner_mod.EtpMapper.ecg_with_norms

    def counting(self, signals):
        embedded["n"] += len(signals)
        return real_ecg(self, signals)

    monkeypatch.setattr(runner_mod.EtpMapper, "ecg_with_norms", counting)
    summary = index_data(example_ptbxl, store, ckpt, batch_size=8, workers=0, device="cpu", progress=False)
    assert summary["rows"] == 50 and summary["already_stored"] == 0
    assert embedded["n"] == 50 - in_shards  # the shards' rows were taken, not embedded again
    _same_store(store, single)
    assert existing_shards(store) == []


def _ranks_reading(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    from etp_search.errors import DataError
    from etp_search.export.runner import _check_same_records

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        said = []
        _check_same_records(["1", "2", "3"], rank)  # the same list: silent
        try:
            _check_same_records(["1", "2", "3"] if rank == 0 else ["1", "3", "2"], rank)
        except DataError as e:
            said.append(str(e))
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(said))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_ranks_that_read_different_record_lists_are_refused(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ranks_reading, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    for rank in (0, 1):
        said = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert len(said) == 1 and "must see the same data folder" in said[0]


def _ranks_merge_fails(rank: int, init_file: str, data: str, store: str, ckpt: str, out_dir: str) -> None:
    import time
    from datetime import timedelta

    import torch.distributed as dist

    from etp_search.export import shards

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=120))
    said: dict = {}
    try:
        if rank == 0:
            def full_disk(*a, **k):
                raise OSError(28, "No space left on device")
            shards.merge_shards = full_disk
        try:
            index_data(data, store, ckpt, batch_size=8, workers=0, device="cpu", progress=False, rank=rank,
                       world_size=2)
        except Exception as e:  # noqa: BLE001 - the test records what each rank saw
            said = {"type": type(e).__name__, "msg": str(e), "t": time.time()}
        if rank == 0:
            time.sleep(15)  # rank 0 stays alive: without the news, rank 1 would sit in the barrier
            said["left"] = time.time()
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(said))
    finally:
        dist.destroy_process_group()


@slow
def test_a_failed_merge_on_rank_0_ends_every_rank_with_one_line(tmp_path, ckpt, example_ptbxl):
    """Ranks started by hand (no torchrun agent to kill them): rank 0's failed merge must reach the
    other ranks at once, as an error that says what to do, and leave the shards to resume from."""
    import torch.multiprocessing as mp

    store = tmp_path / "store.h5"
    mp.spawn(_ranks_merge_fails, args=(str(tmp_path / "init"), str(example_ptbxl), str(store), str(ckpt),
                                       str(tmp_path)), nprocs=2)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["type"] == "OSError" and "No space left" in r0["msg"]
    assert r1["type"] == "EtpError" and "rank 0 failed to merge" in r1["msg"] and "again" in r1["msg"]
    assert r1["t"] < r0["left"] - 5  # rank 1 heard before rank 0 left the group
    assert len(existing_shards(store)) == 2  # nothing embedded is lost: the rerun merges them
    summary = index_data(example_ptbxl, store, ckpt, batch_size=8, workers=0, device="cpu", progress=False)
    assert summary["rows"] == 50 and existing_shards(store) == []
