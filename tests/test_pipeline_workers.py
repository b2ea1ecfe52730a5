"""A reader worker never outlives its process: a `kill -9`ed `index` or a failed torchrun rank left a
DataLoader worker blocked for ever on a full pipe, holding the store's lock and the launcher's stdout."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

CHILD = textwrap.dedent("""
    import multiprocessing, os, sys
    import numpy as np
    from etp_search.pipeline import read_records
    from etp_search.preprocess import get_preset
    from etp_search.readers import open_dataset

    reader = open_dataset(sys.argv[1])
    # Each item carries its signal several times over, so the prefetched batches fill the pipe.
    it = read_records(reader, reader.refs(), get_preset("etp-100hz"),
                      lambda rec, x, flags: np.tile(x, (8, 1)), workers=1, chunk=8)
    next(it)
    print(" ".join(str(w.pid) for w in multiprocessing.active_children()), flush=True)
    os._exit(1)  # as a killed rank does: no clean shutdown of the workers
""")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux's")
def test_workers_die_with_their_process(example_ptbxl: Path, tmp_path: Path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    out, err = tmp_path / "pids.txt", tmp_path / "stderr.txt"
    with open(out, "w") as fo, open(err, "w") as fe:  # files, not pipes: an orphan holding one must not block this test
        proc = subprocess.run([sys.executable, str(script), str(example_ptbxl)], stdout=fo, stderr=fe,
                              timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 1, err.read_text()[-2000:]
    pids = [int(p) for p in out.read_text().split()]
    assert pids
    deadline = time.monotonic() + 15
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [p for p in pids if _alive(p)]
    for p in left:
        os.kill(p, 9)
    assert not left, f"reader worker(s) {left} outlived their process"


def test_workers_ignore_sigint(example_ptbxl: Path):
    """A terminal's Ctrl-C reaches the workers too; one that died of it made the main process fail
    with "DataLoader worker exited unexpectedly" (a traceback, exit 1) instead of "interrupted"."""
    import signal

    from etp_search.pipeline import read_records
    from etp_search.preprocess import get_preset
    from etp_search.readers import open_dataset

    reader = open_dataset(example_ptbxl)
    before = multiprocessing.active_children()
    it = read_records(reader, reader.refs(), get_preset("etp-100hz"), lambda rec, x, flags: rec.id,
                      workers=2, chunk=4)
    got = [item.value for item in next(it)]
    workers = [w for w in multiprocessing.active_children() if w not in before]
    assert len(workers) == 2
    for w in workers:
        os.kill(w.pid, signal.SIGINT)
    time.sleep(0.5)
    assert all(w.is_alive() for w in workers)
    got += [item.value for chunk in it for item in chunk]
    assert len(got) == len(reader.refs())


def _slow_id(rec, x, flags):
    time.sleep(0.5)
    return rec.id


def test_workers_are_shut_down_before_an_interrupt_reaches_the_caller(example_ptbxl: Path):
    """A Ctrl-C while waiting for a chunk: its traceback kept the DataLoader iterator (and its
    workers) alive past the "interrupted" line, and a second SIGINT then hit the iterator's
    ``__del__`` ("Exception ignored ... KeyboardInterrupt" and a traceback after the line)."""
    import signal
    import threading

    from etp_search.pipeline import read_records
    from etp_search.preprocess import get_preset
    from etp_search.readers import open_dataset

    reader = open_dataset(example_ptbxl)
    before = multiprocessing.active_children()
    it = read_records(reader, reader.refs(), get_preset("etp-100hz"), _slow_id, workers=2, chunk=1)
    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()  # lands while next() waits
    with pytest.raises(KeyboardInterrupt) as err:
        while True:
            next(it)
    assert err.value.__traceback__ is not None  # the traceback is alive here, as in the CLI's handler
    assert [w for w in multiprocessing.active_children() if w not in before] == []


PREPARE_INTERRUPTED = textwrap.dedent("""
    import os, signal, sys
    import indexing._crash as crash
    from etp_search.cli import main

    # Ctrl-C as a terminal sends it: to the whole process group, workers included, mid-run.
    crash.hook = lambda point: point == "after-batch" and os.killpg(0, signal.SIGINT)
    sys.argv = ["etp-search", "prepare", *sys.argv[1:]]
    main()
""")


def test_prepare_ctrl_c_with_workers_is_one_line_and_resumes(example_ptbxl: Path, tmp_path: Path):
    script = tmp_path / "child.py"
    script.write_text(PREPARE_INTERRUPTED)
    out = tmp_path / "signals.h5"
    args = [str(example_ptbxl), "--out", str(out), "--workers", "2", "--batch-size", "8", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=180,
                          env=env, start_new_session=True)
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("interrupted: ")
    again = subprocess.run([sys.executable, "-m", "etp_search", "prepare", *args, "--json"], capture_output=True,
                           text=True, timeout=180, env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert '"resumed_from": 8' in again.stdout
