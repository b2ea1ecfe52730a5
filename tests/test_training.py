"""Training on real PTB-XL pairs (the shipped example data): learning, resumption, CLI errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from safetensors.torch import load_file
from typer.testing import CliRunner

from indexing._crash import CrashRequested, crash_at
from etp_search.models import EcgEncoderConfig, EtpConfig, EtpModel, load_checkpoint
from training.augment import AugmentConfig, augment, step_generator
from training.loss import ClipLoss
from training.task import ClipTask
from training.text_cache import TextFeatureCache
from training.trainer import Trainer, TrainConfig, lr_at


@pytest.fixture(scope="module")
def example_cache(example_ptbxl, tmp_path_factory) -> Path:
    """Signal cache of the 50 shipped PTB-XL records (48 of fold 10, 2 of fold 9)."""
    from etp_search.readers import open_dataset
    from etp_search.signal_cache import build_cache

    out = tmp_path_factory.mktemp("cache") / "example.h5"
    build_cache(open_dataset(example_ptbxl, sampling_rate=100), out, "etp-100hz", workers=0, progress=False)
    return out


def _tiny_cfg(cache: Path, out: Path, **kw) -> TrainConfig:
    base = dict(cache=str(cache), out=str(out), encoder="test_tiny", embed_dim=32, epochs=2, batch_size=8,
                lr=3e-3, train_folds=[10], val_folds=[9], save_every_steps=2, seed=1)
    base.update(kw)
    return TrainConfig(**base)


def test_tiny_model_learns_real_pairs(example_cache):
    """A few dozen steps on 16 real pairs: the loss falls and in-batch ECG->report retrieval rises."""
    from etp_search.signal_cache import SignalCache

    cache = SignalCache.open(example_cache)
    texts = cache.texts("scp_en")
    # 16 records with pairwise distinct reports, so in-batch retrieval has one right answer each.
    rows, seen = [], set()
    for i, t in enumerate(texts):
        if t not in seen:
            rows.append(i)
            seen.add(t)
    rows = rows[:16]
    assert len(rows) >= 12
    x = torch.from_numpy(cache.signals(np.array(rows)))
    torch.manual_seed(0)
    model = EtpModel(EtpConfig(ecg=EcgEncoderConfig("test_tiny"), embed_dim=32))
    feats = model.text_features([texts[r] for r in rows])
    task = ClipTask(model, ClipLoss())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)

    def measure() -> tuple[float, float]:
        model.eval()
        with torch.no_grad():
            out = model(x, text_feats=feats)
            loss = ClipLoss()(out["ecg"], out["text"], out["logit_scale"])["contrastive_loss"].item()
            acc = (out["ecg"] @ out["text"].T).argmax(1).eq(torch.arange(len(rows))).float().mean().item()
        return loss, acc

    loss0, acc0 = measure()
    for _ in range(60):
        model.train()
        opt.zero_grad()
        task({"ecg": x, "text_feats": feats})["loss"].backward()
        opt.step()
    loss1, acc1 = measure()
    assert loss1 < 0.5 * loss0
    assert acc1 >= acc0 + 0.3 and acc1 >= 0.75


def test_text_features_are_cached_once(example_cache, tmp_path):
    model = EtpModel(EtpConfig(ecg=EcgEncoderConfig("test_tiny"), embed_dim=16))
    texts = ["sinus rhythm", "atrial fibrillation", "sinus rhythm"]
    tc = TextFeatureCache(tmp_path, model.text)
    tc.ensure(texts)
    assert tc.computed == 2 and len(tc.texts) == 2
    again = TextFeatureCache(tmp_path, model.text)
    again.ensure(texts)
    assert again.computed == 0  # read from disk, the tower did not run
    torch.testing.assert_close(again.lookup(texts), model.text_features(texts))


def test_augment_is_seeded_and_keeps_shape():
    x = torch.randn(4, 12, 1000)
    cfg = AugmentConfig(crop_prob=1.0, scale_prob=1.0, noise_prob=1.0, lead_drop_prob=0.5)
    a = augment(x, cfg, step_generator(0, 5))
    b = augment(x, cfg, step_generator(0, 5))
    c = augment(x, cfg, step_generator(0, 6))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert (a.abs().sum(-1) > 0).any(1).all()  # no sample loses every lead
    assert torch.equal(augment(x, AugmentConfig.off(), step_generator(0, 1)), x)


def test_schedule_warms_up_then_decays_per_step():
    cfg = TrainConfig(lr=1.0, warmup_fraction=0.1, min_lr_ratio=0.0)
    lrs = [lr_at(s, 100, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:])) and lrs[-1] < 0.01


def test_killed_run_resumes_to_the_same_result(example_cache, tmp_path):
    """Crash mid-epoch (after an unsaved step), resume: same weights and metrics as one clean run."""
    clean = Trainer(_tiny_cfg(example_cache, tmp_path / "clean"), progress=False).run()
    with pytest.raises(CrashRequested), crash_at("after-step", nth=3):
        Trainer(_tiny_cfg(example_cache, tmp_path / "crash"), progress=False).run()
    state = json.loads((tmp_path / "crash" / "resume" / "latest.json").read_text())
    assert state["step"] == 2  # the step-3 work was lost and is redone
    resumed = Trainer(_tiny_cfg(example_cache, tmp_path / "crash"), resume=True, progress=False).run()
    assert resumed.step == clean.step == 12
    a = load_file(str(tmp_path / "clean" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "crash" / "last" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
    ha = [json.loads(l) for l in (tmp_path / "clean" / "metrics.jsonl").read_text().splitlines()]
    hb = [json.loads(l) for l in (tmp_path / "crash" / "metrics.jsonl").read_text().splitlines()]
    assert len(ha) == len(hb) == 2
    for ra, rb in zip(ha, hb):
        assert ra["val_loss"] == pytest.approx(rb["val_loss"], abs=1e-5)
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], abs=1e-5)
    # best/ holds a loadable model chosen on the validation fold.
    model = load_checkpoint(tmp_path / "crash" / "best")
    assert model.cfg.ecg.name == "test_tiny"
    assert json.loads((tmp_path / "crash" / "best" / "config.json").read_text())["extra"]["select"] == "val_loss"


def _cli() -> typer.Typer:
    from etp_search.cli.train import train

    app = typer.Typer(add_completion=False)
    app.command("train")(train)
    app.command("noop")(lambda: None)
    return app


def test_cli_trains_from_a_cache_and_refuses_to_overwrite(example_cache, tmp_path):
    runner = CliRunner()
    args = ["train", str(example_cache), "--out", str(tmp_path / "run"), "--encoder", "test_tiny", "--epochs", "1",
            "--batch-size", "16", "--embed-dim", "16", "--train-folds", "10", "--val-folds", "9", "--no-progress", "--json"]
    res = runner.invoke(_cli(), args)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file() and (tmp_path / "run" / "last" / "config.json").is_file()
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["epoch"] == 1 and "val_loss" in rows[0] and "val_recall@10" in rows[0]
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert saved["train_folds"] == [10] and saved["encoder"] == "test_tiny"
    again = runner.invoke(_cli(), args)
    assert again.exit_code == 1 and "already holds a run" in again.output and "--resume" in again.output
    # The default PTB-XL folds find no training record in the example data: one line, no traceback.
    res = runner.invoke(_cli(), ["train", str(example_cache), "--out", str(tmp_path / "x"), "--no-progress"])
    assert res.exit_code == 1 and "no training records" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize(
    "extra, expect",
    [
        (["--encoder", "resnet1d99"], "unknown ECG encoder 'resnet1d99'"),
        (["--text-model", "/nonexistent/text-model"], "cannot load text model"),
        (["--text-source", "column:nope"], "text source"),
    ],
)
def test_cli_user_errors_are_one_line(example_cache, tmp_path, extra, expect):
    res = CliRunner().invoke(_cli(), ["train", str(example_cache), "--out", str(tmp_path / "r"), "--epochs", "1",
                                      "--batch-size", "16", "--train-folds", "10", "--val-folds", "9", "--no-progress", *extra])
    assert res.exit_code == 1, res.output
    lines = [l for l in res.output.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and expect in lines[0] and "Traceback" not in res.output


def test_cli_resume_without_a_run_is_one_line(tmp_path):
    res = CliRunner().invoke(_cli(), ["train", "--resume", str(tmp_path)])
    assert res.exit_code == 1 and "holds no training run" in res.output


def test_partly_trainable_text_tower_trains_and_is_stored(example_cache, tmp_path):
    cfg = _tiny_cfg(example_cache, tmp_path / "run", epochs=1, batch_size=16, text_trainable_layers=1)
    Trainer(cfg, progress=False).run()
    assert not list((tmp_path / "run").glob("text_features-*"))  # a trainable tower is never cached
    doc = json.loads((tmp_path / "run" / "last" / "config.json").read_text())
    assert doc["text_tower_stored"] is True
    keys = load_file(str(tmp_path / "run" / "last" / "model.safetensors"))
    assert any(k.startswith("text_encoder.hf.encoder.layer.5.") for k in keys)
    model = load_checkpoint(tmp_path / "run" / "last")
    assert model.encode_text(["sinus rhythm"]).shape == (1, 32)


def _one_error(res, expect: str) -> str:
    assert res.exit_code == 1, res.output
    lines = [l for l in res.output.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and expect in lines[0] and "Traceback" not in res.output, res.output
    return lines[0]


_TINY = ["--encoder", "test_tiny", "--epochs", "1", "--batch-size", "8", "--embed-dim", "16", "--no-progress"]


@pytest.mark.parametrize(
    "extra, expect",
    [
        (["--device", "nonsense"], "pass auto, cpu, cuda or cuda:N"),
        (["--select", "nosuch", "--train-folds", "10", "--val-folds", "9"], "unknown --select 'nosuch'"),
        (["--train-folds", "10", "--val-folds", "10"], "share fold 10"),
        (["--train-folds", "10", "--val-folds", "7"], "this data has folds 9, 10"),
        (["--train-folds", "10", "--val-folds", "9", "--batch-size", "64"], "lower --batch-size"),
        (["--train-folds", "10", "--val-folds", "9", "--weights-dtype", "int8"], "unknown --weights-dtype"),
    ],
)
def test_cli_refuses_bad_runs_before_writing_anything(example_cache, tmp_path, extra, expect):
    """Each of these used to train and exit 0 without best/ (or crash); now one line and RUN_DIR stays absent."""
    res = CliRunner().invoke(_cli(), ["train", str(example_cache), "--out", str(tmp_path / "r"), *_TINY, *extra])
    _one_error(res, expect)
    assert not (tmp_path / "r").exists()


def test_cli_select_lists_the_known_figures(example_cache, tmp_path):
    res = CliRunner().invoke(_cli(), ["train", str(example_cache), "--out", str(tmp_path / "r"), *_TINY, "--select", "val_auc"])
    line = _one_error(res, "unknown --select")
    assert "val_loss" in line and "val_recall@10" in line and "val_zeroshot_auc_superdiagnostic" in line


def test_cli_default_folds_on_the_example_name_the_folds_it_has(example_cache, tmp_path):
    res = CliRunner().invoke(_cli(), ["train", str(example_cache), "--out", str(tmp_path / "r"), *_TINY])
    line = _one_error(res, "no training records")
    assert "this data has folds 9, 10" in line and "--train-folds 10 --val-folds 9" in line
    assert not (tmp_path / "r").exists()


def test_cli_refuses_a_non_empty_folder_that_is_not_a_run(example_cache, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my files")
    res = CliRunner().invoke(_cli(), ["train", str(example_cache), "--out", str(out), *_TINY,
                                      "--train-folds", "10", "--val-folds", "9"])
    _one_error(res, "is not empty and holds no training run")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_cli_ctrl_c_says_how_to_resume(example_cache, tmp_path, monkeypatch):
    run = tmp_path / "run"
    real = Trainer._end_epoch

    def interrupt_after_first_epoch(self, *a, **kw):
        out = real(self, *a, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_end_epoch", interrupt_after_first_epoch)
    res = CliRunner().invoke(_cli(), ["train", str(example_cache), "--out", str(run), "--encoder", "test_tiny",
                                      "--epochs", "2", "--batch-size", "16", "--embed-dim", "16",
                                      "--train-folds", "10", "--val-folds", "9", "--no-progress"])
    assert res.exit_code == 130, res.output
    assert f"continue with `etp-search train --resume {run}`" in res.output and "run the same command" not in res.output
    monkeypatch.setattr(Trainer, "_end_epoch", real)
    # Settings given with --resume were ignored without a word (it resumed the saved 2-epoch run).
    changed = CliRunner().invoke(_cli(), ["train", "--resume", str(run), "--epochs", "6", "--lr", "0.5"])
    _one_error(changed, "drop --epochs, --lr")
    again = CliRunner().invoke(_cli(), ["train", "--resume", str(run), "--no-progress", "--json", "--threads", "1"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.output[again.output.index("{"):])["last"]["epoch"] == 2


def test_best_follows_the_latest_model_while_the_figure_has_no_value(example_cache, tmp_path):
    """val_zeroshot_auc needs labelled validation records (PTB-XL has no CPSC labels); with none, best/ must still exist at the end."""
    cfg = _tiny_cfg(example_cache, tmp_path / "run", epochs=1, batch_size=16, val_task="cpsc2018",
                    select="val_zeroshot_auc_cpsc2018")
    Trainer(cfg, progress=False).run()
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()


def test_help_shows_the_cache_default():
    res = CliRunner().invoke(_cli(), ["train", "--help"], env={"COLUMNS": "300"})
    assert "etp-data/signals-<format>-<folder>-<hash>-<preset>.h5" in res.output


# -- statement-level text, hierarchy, fractions ------------------------------------------------------


def test_record_statements_are_the_report_pieces_plus_hierarchy_names():
    from etp_search.labels import record_statements
    from etp_search.text import compose_scp_report

    lab = {"IMI": 100.0, "SR": 0.0, "LVH": 20.0}
    assert ", ".join(record_statements(lab)) == compose_scp_report(lab)
    full = record_statements(lab, hierarchy=True)
    assert full[:3] == record_statements(lab)
    # IMI's class is added; its subclass IMI is the statement itself (kept once); "possible" LVH adds none
    assert full[3:] == ["myocardial infarction"]


def test_subsample_rows_is_nested_and_checked():
    from etp_search.errors import DataError
    from training.data import subsample_rows

    rows = np.arange(100, 200)
    q, h = subsample_rows(rows, 0.25, 0), subsample_rows(rows, 0.5, 0)
    assert len(q) == 25 and len(h) == 50 and set(q) <= set(h) <= set(rows)
    with pytest.raises(DataError, match="--train-fraction"):
        subsample_rows(rows, 0.0, 0)


def test_statement_sampling_uses_cached_statement_vectors(example_cache, tmp_path):
    """Statement texts come from the text cache (the tower runs once), the sets mark the sampled one."""
    cfg = _tiny_cfg(example_cache, tmp_path / "run", epochs=1, batch_size=16, targets="jaccard",
                    text_sampling="statement", statement_hierarchy=True, train_fraction=0.75)
    tr = Trainer(cfg, progress=False)
    tr._setup()
    st = tr.statements
    assert len(tr.train) == 36 and "myocardial infarction" in st.vocab
    assert tr.text_cache.computed == len(set(tr.train.texts + tr.val.texts) | set(st.vocab))
    idx = list(range(16))
    batch = tr._batch(idx, step=5)
    assert (batch["text_sets"].sum(1) == 1).all()  # one statement each
    assert (batch["text_sets"] & ~batch["ecg_sets"]).sum() == 0  # ... of the record's own statements
    sid = batch["text_sets"].float().argmax(1)
    torch.testing.assert_close(batch["text_feats"], tr.statement_feats[sid])
    again = tr._batch(idx, step=5)  # seeded by step: a resumed run draws the same statements
    assert torch.equal(again["text_sets"], batch["text_sets"])
    res = tr.run()
    assert res.history and np.isfinite(res.history[-1]["train_loss"])


@pytest.mark.parametrize("extra, expect", [
    (["--lr", "nan"], "--lr must be a number"),
    (["--train-fraction", "1.5"], "--train-fraction must be"),
    (["--targets", "soft"], "unknown --targets 'soft'"),
    (["--text-sampling", "words"], "unknown --text-sampling 'words'"),
])
def test_cli_refuses_bad_recipe_options(example_cache, tmp_path, extra, expect):
    res = CliRunner().invoke(_cli(), ["train", str(example_cache), "--out", str(tmp_path / "r"), *_TINY,
                                      "--train-folds", "10", "--val-folds", "9", *extra])
    _one_error(res, expect)
    assert not (tmp_path / "r").exists()


def test_progress_record_keeps_the_resume_json_keys():
    """TrainProgress is saved as the same JSON object the untyped dict was, and reads it back."""
    from training.state import TrainProgress

    legacy = {"epoch": 2, "batch": 0, "step": 12, "history": [{"epoch": 1, "step": 6, "train_loss": 1.5, "best_epoch": 1},
                                                             {"epoch": 2, "step": 12, "train_loss": 1.2, "best_epoch": 1}],
              "best": 0.7, "best_epoch": 1, "epoch_loss_sum": 0.0, "epoch_loss_n": 0, "train_seconds": 3.5}
    p = TrainProgress.from_dict(json.loads(json.dumps(legacy)))
    assert p.step == 12 and p.best == 0.7 and p.best_record()["train_loss"] == 1.5
    assert json.loads(json.dumps(p.to_dict())) == legacy
    assert TrainProgress().best_record() == {}
