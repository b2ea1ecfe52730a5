"""Seeded, bounded fuzz through the CLI (issue 11): flip bytes of the store, of its FAISS files and
sidecars, or of a query ECG's header, then run `etp-search query` as a user would.

Each run must end in one of two ways: exit 0 with the answer of the undamaged store (exact search
over its vectors), or exit 1 with one `error:` line. Never a traceback, never a silent wrong top-k.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from etp_search.cli import query as query_verb
from etp_search.export import index_data
from indexing.store import EmbeddingStore

K = 5
RECORDS = ("38", "57", "40")  # query records of the shipped example


def _app():
    import typer

    app = typer.Typer()
    app.command("query")(query_verb.query)
    app.command("noop")(lambda: None)
    return app


APP = _app()


@pytest.fixture(scope="module")
def built(tmp_path_factory, example_ptbxl):
    """A store of the 50 example records by a tiny random checkpoint, and the right answers."""
    import torch

    from etp_search.models import EcgEncoderConfig, EtpConfig, EtpModel, save_checkpoint

    root = tmp_path_factory.mktemp("fuzz")
    torch.manual_seed(0)
    ckpt = root / "tiny"
    save_checkpoint(EtpModel(EtpConfig(ecg=EcgEncoderConfig(name="test_tiny")), load_text=False), ckpt)
    store = root / "store.h5"
    index_data(example_ptbxl, store, str(ckpt), workers=0, progress=False)
    with EmbeddingStore.open(store) as s:
        ids, x = s.ids, s.ecg()
    expect = {}
    for rid in RECORDS:
        i = ids.index(rid)
        order = [int(r) for r in np.argsort(-(x @ x[i]), kind="stable") if r != i][:K]
        expect[rid] = [ids[r] for r in order]
    return store, ckpt, expect


def _copy(store: Path, dst: Path) -> Path:
    dst.mkdir()
    for side in store.parent.glob(store.name + "*"):
        (shutil.copytree if side.is_dir() else shutil.copy)(side, dst / side.name)
    return dst / store.name


def _flip(path: Path, rng: np.random.Generator, most: int) -> None:
    data = bytearray(path.read_bytes())
    for i in rng.choice(len(data), size=int(rng.integers(1, most + 1)), replace=False):
        data[i] ^= int(rng.integers(1, 256))
    path.write_bytes(bytes(data))


def _outcome(res) -> str:
    """'ok' or 'error' (one line); anything else fails the test with the output."""
    assert "Traceback" not in res.output, res.output
    if res.exit_code == 0:
        return "ok"
    assert res.exit_code == 1 and (res.exception is None or isinstance(res.exception, SystemExit)), \
        (res.exit_code, repr(res.exception), res.output)
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and "\n" not in errors[0], res.output
    return "error"


def _hits(res) -> list[str]:
    return [h["id"] for h in json.loads(res.output[res.output.index("{"):])["hits"]]


TARGETS = ("store.h5", "store.h5.ecg.faiss", "store.h5.ecg.faiss.json", "swap", "store.h5.text.faiss")


@pytest.mark.parametrize("seed", range(20))
def test_damaged_store_or_index_gives_the_right_answer_or_one_line(built, tmp_path, seed):
    store0, _, expect = built
    rng = np.random.default_rng(seed)
    store = _copy(store0, tmp_path / "s")
    target = TARGETS[seed % len(TARGETS)]
    if target == "swap":  # the ecg and text indexes with their sidecars: every size and digest matches
        for ext in ("faiss", "faiss.json"):
            a, b = Path(f"{store}.ecg.{ext}"), Path(f"{store}.text.{ext}")
            da, db = a.read_bytes(), b.read_bytes()
            a.write_bytes(db)
            b.write_bytes(da)
    else:
        _flip(store.parent / target, rng, 16 if target == "store.h5" else 200)
    outcomes = []
    for rid in RECORDS:
        res = CliRunner().invoke(APP, ["query", "--store", str(store), "--record", rid, "-k", str(K), "--json"])
        outcomes.append(_outcome(res))
        if outcomes[-1] == "ok":
            assert _hits(res) == expect[rid], f"{target}: wrong top-{K} for {rid} with exit 0"
    # The undamaged copy answers correctly, so a right answer or an error is all this test allows.
    assert set(outcomes) <= {"ok", "error"}


@pytest.mark.parametrize("seed", range(12))
def test_damaged_query_header_gives_a_result_or_one_line(built, tmp_path, example_ptbxl, seed):
    store0, _, _ = built
    store = _copy(store0, tmp_path / "s")
    rec = tmp_path / "rec"
    rec.mkdir()
    for ext in ("hea", "dat"):
        shutil.copy(example_ptbxl / "records100" / "00000" / f"00038_lr.{ext}", rec / f"00038_lr.{ext}")
    hea = rec / "00038_lr.hea"
    rng = np.random.default_rng(100 + seed)
    text = bytearray(hea.read_bytes())
    for i in rng.choice(len(text), size=int(rng.integers(1, 4)), replace=False):
        text[i] = int(rng.choice(list(b"0123456789.-e ()/x\n\xff")))
    hea.write_bytes(bytes(text))
    res = CliRunner().invoke(APP, ["query", "--store", str(store), "--ecg", str(hea), "-k", str(K), "--json"])
    if _outcome(res) == "ok":
        assert len(_hits(res)) == K
