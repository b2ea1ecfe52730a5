"""Seeded, bounded fuzzing of the readers on copies of real records.

Header bytes, signal bytes (.dat, CinC .mat) and PTB-XL table cells are mutated; every read must
give a record that keeps the ``EcgRecord`` contract (and preprocesses) or a ``SkipRecord`` with a
reason, never another exception; ``etp-search info`` on the fuzzed folder exits 0 with the skips
counted, or 1 with one line, never a traceback. ``ETP_FUZZ_CASES`` raises the number of cases for
a longer local run (the default keeps the file to a few seconds).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import wfdb
from typer.testing import CliRunner

from etp_search.errors import DataError
from etp_search.preprocess import preprocess
from etp_search.readers import SkipRecord, open_dataset
from etp_search.readers.base import MAX_FS, MIN_FS, MIN_SECONDS

SEED = 20240611
CASES = int(os.environ.get("ETP_FUZZ_CASES", "150"))
EXAMPLE = "records100/00000/00009_lr"

# Values a damaged or hostile header/table holds in place of a number or a name.
NASTY = ["1e400", "-1e400", "1e9", "0.01", "0", "-1", "nan", "inf", "1\u00b2", "\u0661\u0662", "", "99999999999999999999",
         "1e-300", "0x10", "16x0", "16:99999999", "16+99999999", "212", "8", "310", "508", "../../x", "/dev/zero",
         "\x00", "\u00e4\u00f6", "-", "1000.0(1e400)/mV", "1(2)(3)", "{}", "'", "a" * 300]


def _mutate(data: bytes, rng: random.Random) -> bytes:
    """One random damage: flip, insert, delete, truncate, duplicate a line or (most often: the numbers a
    header lives by) swap a token for a nasty value."""
    op = rng.randrange(8)
    if op == 0 and data:
        i = rng.randrange(len(data))
        return data[:i] + bytes([rng.randrange(256)]) + data[i + 1:]
    if op == 1:
        i = rng.randrange(len(data) + 1)
        return data[:i] + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 8))) + data[i:]
    if op == 2 and data:
        i = rng.randrange(len(data))
        return data[:i] + data[i + rng.randrange(1, 64):]
    if op == 3:
        return data[:rng.randrange(len(data) + 1)]
    lines = data.split(b"\n")
    if op == 4:
        i = rng.randrange(len(lines))
        lines.insert(i, lines[rng.randrange(len(lines))])
        return b"\n".join(lines)
    i = rng.randrange(len(lines)) if op == 5 else min(op - 6, len(lines) - 1)  # 6: record line, 7: first signal
    tokens = lines[i].split(b" ")
    tokens[rng.randrange(len(tokens))] = rng.choice(NASTY).encode("utf-8")
    lines[i] = b" ".join(tokens)
    return b"\n".join(lines)


def _check_outcome(reader, ref: str, skipped: dict[str, int]) -> None:
    """A record that keeps the contract and preprocesses, or a SkipRecord; anything else fails the test."""
    try:
        rec = reader.read(ref)
    except SkipRecord as exc:
        assert exc.reason and "\n" not in str(exc), exc
        skipped[exc.reason] = skipped.get(exc.reason, 0) + 1
        return
    assert rec.signal.ndim == 2 and rec.signal.shape[0] == 12 and np.isfinite(rec.signal).all()
    assert MIN_FS <= rec.fs <= MAX_FS and rec.signal.shape[1] >= MIN_SECONDS * rec.fs and rec.id
    x, _ = preprocess(rec.signal, rec.fs, "etp-100hz", rec.leads)
    assert x.shape == (12, 1000) and np.isfinite(x).all()
    skipped["(read)"] = skipped.get("(read)", 0) + 1


def _sources(example_ptbxl: Path, shared_root: Path, work: Path) -> list[tuple[Path, str]]:
    """(record path without extension, signal extension) of the real records the cases start from."""
    raw = wfdb.rdrecord(str(example_ptbxl / EXAMPLE))
    out = [(example_ptbxl / EXAMPLE, ".dat")]
    for fmt, gain in (("212", 500.0), ("80", 10.0), ("32", 1000.0)):  # the other decoders, same real signal
        wfdb.wrsamp(f"f{fmt}", fs=100, units=["mV"] * 12, sig_name=list(raw.sig_name), p_signal=raw.p_signal,
                    fmt=[fmt] * 12, adc_gain=[gain] * 12, baseline=[0] * 12, write_dir=str(work))
        out.append((work / f"f{fmt}", ".dat"))
    cinc = shared_root / "cpsc2018" / "cinc2020" / "A0002"
    if Path(f"{cinc}.hea").exists():
        out.append((cinc, ".mat"))
    return out


def _write_case(src: Path, ext: str, dst: Path, rng: random.Random) -> None:
    """Copy one record as ``dst`` (header rewritten to name its own signal file), then damage it."""
    hea = Path(f"{src}.hea").read_bytes().replace(src.name.encode(), dst.name.encode())
    sig = Path(f"{src}{ext}").read_bytes()
    target = rng.choice(("hea", "hea", "sig", "both"))
    for _ in range(rng.randrange(1, 4)):
        if target in ("hea", "both"):
            hea = _mutate(hea, rng)
        if target in ("sig", "both"):
            sig = _mutate(sig, rng)
    Path(f"{dst}.hea").write_bytes(hea)
    Path(f"{dst}{ext}").write_bytes(sig)


@pytest.fixture(scope="module")
def fuzzed(example_ptbxl: Path, tmp_path_factory) -> tuple[Path, list[str]]:
    work = tmp_path_factory.mktemp("fuzz-src")
    root = tmp_path_factory.mktemp("fuzz")
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    sources = _sources(example_ptbxl, shared, work)
    rng = random.Random(SEED)
    names = []
    for i in range(CASES):
        src, ext = sources[i % len(sources)]
        name = f"case{i:04d}"
        _write_case(src, ext, root / name, rng)
        names.append(name)
    return root, names


def test_fuzzed_wfdb_and_cinc_records_are_records_or_counted_skips(fuzzed):
    root, names = fuzzed
    reader = open_dataset(root, fmt="wfdb")
    outcomes: dict[str, int] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy/wfdb warn about odd files; the outcome is what counts
        for name in names:
            _check_outcome(reader, name, outcomes)
    assert sum(outcomes.values()) == len(names)
    # The damage really reaches the readers: many skips for many reasons, and some records survive.
    assert outcomes.get("(read)", 0) > 0 and len(outcomes) >= 5, outcomes


def test_info_on_the_fuzzed_folder_counts_or_says_one_line(fuzzed):
    from etp_search.cli import _register, app

    _register()
    root, names = fuzzed
    res = CliRunner().invoke(app, ["info", str(root), "--sample", "0", "--workers", "0", "--json"])
    assert res.exception is None or isinstance(res.exception, SystemExit), res.output
    assert "Traceback" not in res.output
    if res.exit_code == 0:
        out = json.loads(res.stdout)
        assert out["records_found"] == len(names)
        assert sum(out["skipped"].values()) > 0
    else:
        lines = res.stderr.strip().splitlines()
        assert res.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error:"), res.output


def test_fuzzed_ptbxl_table_cells_are_records_skips_or_one_table_error(example_ptbxl, tmp_path):
    rng = random.Random(SEED + 1)
    base = pd.read_csv(example_ptbxl / "ptbxl_database.csv", dtype=str, keep_default_na=False)
    columns = ["ecg_id", "patient_id", "age", "sex", "strat_fold", "scp_codes", "filename_lr", "report"]
    root = tmp_path / "ptbxl"
    shutil.copytree(example_ptbxl, root)
    table_errors = 0
    outcomes: dict[str, int] = {}
    for _ in range(max(10, CASES // 6)):
        table = base.copy()
        for _ in range(rng.randrange(1, 6)):
            row, col = rng.randrange(len(table)), rng.choice(columns)
            value = rng.choice([*NASTY, "{'NORM': None}", "{'NORM': 1e400}", "-" * 20000 + "1", "{1: 2}",
                                "[1, 2]", "{'NORM': 100.0, 'SR': -5}", "1.5", "300"])
            table.loc[row, col] = value
        table.to_csv(root / "ptbxl_database.csv", index=False)
        try:
            reader = open_dataset(root)
            refs = reader.refs()
        except DataError as exc:  # a table-level problem: one line
            assert "\n" not in str(exc)
            table_errors += 1
            continue
        for ref in refs:
            _check_outcome(reader, ref, outcomes)
    assert outcomes.get("(read)", 0) > 0 and sum(v for k, v in outcomes.items() if k != "(read)") > 0
