"""`etp-search zeroshot | probe | retrieval` end to end on real stores, and their one-line errors."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import typer
from typer.testing import CliRunner

from etp_search.cli import evaluate as ev
from etp_search.export import index_data
from etp_search.labels import get_task
from etp_search.models import EcgEncoderConfig, EtpConfig, EtpModel, save_checkpoint
from indexing.store import EmbeddingStore

cli = CliRunner()


def _app():
    import typer

    app = typer.Typer()
    app.command("zeroshot")(ev.zeroshot)
    app.command("probe")(ev.probe)
    app.command("retrieval")(ev.retrieval)
    return app


APP = _app()


def _run(*args: str):
    return cli.invoke(APP, [str(a) for a in args])


def _one_line_error(res, match: str) -> None:
    assert res.exit_code == 1, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], res.output


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("ckpt")
    out = []
    for seed, name in ((0, "a"), (1, "b")):
        torch.manual_seed(seed)
        out.append(save_checkpoint(EtpModel(EtpConfig(ecg=EcgEncoderConfig(name="test_tiny")), load_text=False), d / name))
    return out[0], out[1]


@pytest.fixture(scope="module")
def example_stores(tmp_path_factory, ckpts, example_ptbxl) -> tuple[Path, Path]:
    """The 50 shipped PTB-XL records indexed by two different tiny checkpoints (main, baseline)."""
    d = tmp_path_factory.mktemp("stores")
    a, b = d / "a.h5", d / "b.h5"
    index_data(example_ptbxl, a, ckpts[0], batch_size=25, workers=0, progress=False)
    index_data(example_ptbxl, b, ckpts[1], batch_size=25, workers=0, progress=False)
    return a, b


def _synthetic_store(path: Path, codes: list[dict], folds: np.ndarray, seed: int = 0, dim: int = 32) -> Path:
    """Vectors with a planted direction per SCP code, real labels and folds."""
    rng = np.random.default_rng(seed)
    keys = sorted({k for c in codes for k in c})
    dirs = rng.normal(size=(len(keys), dim))
    Y = np.array([[1.0 if k in c else 0.0 for k in keys] for c in codes])
    X = rng.normal(size=(len(codes), dim)) + Y @ dirs * 0.7
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    with EmbeddingStore.create(path, dim, {"note": "synthetic"}) as s:
        s.append([str(i) for i in range(len(codes))], X.astype(np.float32), X.astype(np.float32),
                 texts=[",".join(sorted(c)) for c in codes], labels=codes, meta={"strat_fold": folds.tolist()})
    return path


@pytest.fixture(scope="module")
def ptbxl_store(tmp_path_factory, shared_ptbxl) -> tuple[Path, Path]:
    df = pd.read_csv(shared_ptbxl / "ptbxl_database.csv", usecols=["scp_codes", "strat_fold"]).iloc[:3000]
    codes = [ast.literal_eval(s) for s in df["scp_codes"]]
    d = tmp_path_factory.mktemp("ptbxl")
    folds = df["strat_fold"].to_numpy()
    return _synthetic_store(d / "main.h5", codes, folds, 0), _synthetic_store(d / "base.h5", codes, folds, 1)


def test_zeroshot_table_and_json_with_baseline(example_stores):
    a, b = example_stores
    res = _run("zeroshot", "--task", "superdiagnostic", "--store", a, "--baseline-store", b, "--n-boot", "50")
    assert res.exit_code == 0, res.output
    assert "MACRO" in res.output and "delta" in res.output and "NORM" in res.output
    res = _run("zeroshot", "--task", "superdiagnostic", "--store", a, "--split", "all", "--prompts", "ensemble",
               "--n-boot", "50", "--json")
    out = json.loads(res.output)
    with EmbeddingStore.open(a) as s:  # records without a superclass drop out of the task
        expected = sum(get_task("superdiagnostic").has_labels(lab) for lab in s.labels())
    assert 40 <= expected < 50 and out["n_records"] == expected
    assert set(out["main"]["per_class"]) == {"CD", "HYP", "MI", "NORM", "STTC"}
    assert 0.0 <= out["main"]["macro_auc"] <= 1.0
    assert sum(out["main"]["assigned"].values()) == expected


def test_zeroshot_free_labels_match_scp_codes(example_stores):
    a, _ = example_stores
    res = _run("zeroshot", "--labels", "normal ECG,sinus rhythm,chest pain", "--store", a, "--split", "all",
               "--n-boot", "20", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert set(out["main"]["per_class"]) == {"normal ECG", "sinus rhythm"}
    assert out["no_ground_truth"] == ["chest pain"] and sum(out["main"]["assigned"].values()) == 50


def test_zeroshot_prompt_checkpoint_must_match_store(example_stores, ckpts):
    _one_line_error(_run("zeroshot", "--task", "rhythm", "--store", example_stores[0], "--checkpoint", ckpts[1]),
                    "was written by checkpoint")


def test_unknown_task_and_store_without_task_labels_fail_in_one_line(example_stores, tmp_path):
    a, _ = example_stores
    unlabelled = _synthetic_store(tmp_path / "nolabels.h5", [{"NORM": 100.0}, {"IMI": 0.0}] * 6, np.arange(12) % 10 + 1)
    _one_line_error(_run("zeroshot", "--task", "superdiag", "--store", a), "known tasks")
    _one_line_error(_run("probe", "--task", "superdiag", "--store", a), "known tasks")
    # PTB-XL labels are SCP codes: none of them is a CPSC class except NORM/PAC/PVC, so use a diagnostic one
    _one_line_error(_run("zeroshot", "--task", "rhythm", "--store", unlabelled), "holds no labels for task 'rhythm'")
    _one_line_error(_run("probe", "--task", "rhythm", "--store", unlabelled), "holds no labels for task 'rhythm'")
    _one_line_error(_run("zeroshot", "--store", a), "--task")
    _one_line_error(_run("zeroshot", "--task", "rhythm", "--store", a.parent / "none.h5"), "no embedding store")
    _one_line_error(_run("zeroshot", "--task", "rhythm", "--store", a, "--split", "train"), "unknown split")


def test_probe_on_folds_9_10_only_says_it_needs_training_folds(example_stores):
    _one_line_error(_run("probe", "--task", "superdiagnostic", "--store", example_stores[0]), "training fold")
    _one_line_error(_run("probe", "--task", "rhythm", "--fractions", "0,200", "--store", example_stores[0]), "--fractions")


def test_retrieval_with_baseline(example_stores):
    a, b = example_stores
    res = _run("retrieval", "--store", a, "--baseline-store", b, "--split", "all", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    for name in ("main", "baseline"):
        assert out[name]["n_records"] == 50 and set(out[name]["ecg_to_report"]) == {"1", "5", "10"}
        assert out[name]["n_unique_reports"] <= 50
    assert "recall" in _run("retrieval", "--store", a).output


def test_probe_cli_on_real_ptbxl_labels(ptbxl_store):
    main, base = ptbxl_store
    res = _run("probe", "--task", "superdiagnostic", "--fractions", "10,100", "--seeds", "2", "--store", main,
               "--baseline-store", base, "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output[res.output.index("{"):])
    rows = out["main"]["rows"]
    assert [r["fraction_pct"] for r in rows] == [10, 100] and rows[-1]["auc_mean"] > 0.8
    assert len(out["baseline"]["rows"]) == 2
    table = _run("probe", "--task", "superdiagnostic", "--fractions", "100", "--seeds", "1", "--store", main)
    assert "fold 10" in table.output and "auc_mean" in table.output


def test_store_without_folds_zeroshot_uses_all_rows_probe_refuses(tmp_path, ckpts):
    codes = [{"NORM": 100.0, "SR": 0.0}, {"AFIB": 100.0}, {"IMI": 50.0, "SR": 0.0}, {"NORM": 80.0}] * 5
    store = _synthetic_store(tmp_path / "nofold.h5", codes, np.full(20, -1), dim=256)
    res = _run("zeroshot", "--task", "superdiagnostic", "--store", store, "--checkpoint", ckpts[0], "--n-boot", "10", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["n_records"] == 15 and "no strat_fold" in out["split_note"]  # AFIB-only rows have no superclass
    _one_line_error(_run("probe", "--task", "superdiagnostic", "--store", store), "needs strat_fold")
    small = _synthetic_store(tmp_path / "dim32.h5", codes, np.full(20, -1), dim=32)
    _one_line_error(_run("zeroshot", "--task", "superdiagnostic", "--store", small, "--checkpoint", ckpts[0]),
                    "embeds in 256 dimensions")


def test_negative_n_boot_is_refused_before_any_work(tmp_path):
    res = _run("zeroshot", "--task", "rhythm", "--n-boot", "-5", "--store", tmp_path / "none.h5")
    assert res.exit_code == 2 and "--n-boot" in res.output and "greater than or equal to 0" in res.output, res.output


def test_task_help_lists_tasks_in_list_tasks_order_and_verbose_has_help():
    from etp_search.labels import list_tasks

    assert list(ev.TASK_NAMES) == list(list_tasks())
    wanted = "Task: " + ", ".join(list_tasks()) + "."
    for verb in ("zeroshot", "probe"):
        params = {p.name: p for p in typer.main.get_command(APP).commands[verb].params}
        assert params["task"].help == wanted
        assert params["verbose"].help == "More log output."


def test_probe_features_option_is_checked_and_shown(ptbxl_store):
    main, _ = ptbxl_store
    _one_line_error(_run("probe", "--task", "superdiagnostic", "--features", "raw", "--store", main),
                    "--features takes one of auto, unit, projection")
    # a store without ECG norms (synthetic: unit vectors only) cannot give the projection, and says how to get it
    _one_line_error(_run("probe", "--task", "superdiagnostic", "--features", "projection", "--store", main),
                    "--rebuild")
    table = _run("probe", "--task", "superdiagnostic", "--fractions", "100", "--seeds", "1", "--features", "unit",
                 "--store", main)
    assert table.exit_code == 0, table.output
    header, _, row = table.output.strip().splitlines()[-3:]
    assert header.split()[-1] == "features" and row.split()[-1] == "unit", table.output
