"""The one crash hook (indexing/_crash.py) that the store, signal cache and trainer tests share."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import indexing._crash as crash
from indexing._crash import CrashRequested, crash_at, crash_point


def test_crash_at_fires_on_the_nth_arrival_of_its_point_only():
    with pytest.raises(CrashRequested, match="after-step #3"), crash_at("after-step", nth=3):
        for _ in range(2):
            crash_point("after-step")
            crash_point("after-batch")  # another point does not count
        crash_point("after-step")
        pytest.fail("the third arrival must raise")
    assert crash.hook is None  # disarmed on the way out
    crash_point("after-step")  # and a point without a hook is a no-op


def test_crash_at_refuses_to_nest_and_bad_counts():
    with crash_at("a"):
        with pytest.raises(RuntimeError, match="does not nest"), crash_at("b"):
            pass
        assert crash.hook is not None  # the outer hook is still armed
    with pytest.raises(ValueError, match="from 1"), crash_at("a", nth=0):
        pass


def test_exit_code_ends_the_process_without_cleanup(tmp_path: Path):
    code = ("from indexing._crash import crash_at, crash_point\n"
            "with crash_at('p', nth=2, exit_code=17):\n"
            "    try:\n        crash_point('p'); crash_point('p')\n"
            "    finally:\n        print('finally ran')\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert res.returncode == 17 and "finally ran" not in res.stdout
