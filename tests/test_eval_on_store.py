"""etp_search.evaluation.on_store: the evaluations the CLI prints, called as a library on open stores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import etp_search.models as models_pkg
from etp_search.cli.common import to_jsonable
from etp_search.errors import DataError
from etp_search.evaluation import on_store as O
from etp_search.evaluation.probe import run_probe
from etp_search.evaluation.retrieval import evaluate_retrieval
from etp_search.export import index_data
from etp_search.labels import get_task
from etp_search.models import EcgEncoderConfig, EtpConfig, EtpModel, save_checkpoint
from indexing.store import EmbeddingStore

from tests.test_eval_cli import APP, cli  # the evaluate verbs on one typer app


def _json(*args: object) -> dict:
    res = cli.invoke(APP, [str(a) for a in args] + ["--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.output[res.output.index("{"):])


@pytest.fixture(scope="module")
def stores(tmp_path_factory, example_ptbxl) -> dict[str, Path]:
    """The shipped 50 records indexed by tiny checkpoint a (twice: "a", "a2") and by checkpoint b."""
    d = tmp_path_factory.mktemp("onstore")
    ck = {}
    for seed, name in ((0, "a"), (1, "b")):
        torch.manual_seed(seed)
        ck[name] = save_checkpoint(EtpModel(EtpConfig(ecg=EcgEncoderConfig(name="test_tiny")), load_text=False), d / f"ck{name}")
    out = {}
    for name, c in (("a", "a"), ("a2", "a"), ("b", "b")):
        out[name] = d / f"{name}.h5"
        index_data(example_ptbxl, out[name], ck[c], batch_size=25, workers=0, progress=False)
    return out


def _synthetic(path: Path, codes: list[dict], folds: np.ndarray, order: np.ndarray, seed: int, dim: int = 16,
               prefix: str = "") -> Path:
    """Planted per-code directions; records written in ``order`` (ids stay those of the unpermuted list)."""
    rng = np.random.default_rng(seed)
    keys = sorted({k for c in codes for k in c})
    Y = np.array([[1.0 if k in c else 0.0 for k in keys] for c in codes])
    X = rng.normal(size=(len(codes), dim)) + Y @ rng.normal(size=(len(keys), dim)) * 0.8
    X = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    with EmbeddingStore.create(path, dim, {"note": "synthetic"}) as s:
        s.append([f"{prefix}{i}" for i in order], X[order], X[order], texts=[",".join(sorted(codes[i])) for i in order],
                 labels=[codes[i] for i in order], meta={"strat_fold": folds[order].tolist()})
    return path


@pytest.fixture(scope="module")
def folded(tmp_path_factory) -> tuple[Path, Path, Path]:
    """200 records with folds 1-10; the baseline holds the same ids in reversed order."""
    pool = [{"NORM": 100.0}, {"IMI": 100.0}, {"NORM": 100.0, "LVH": 50.0}, {"AFIB": 100.0, "IMI": 80.0}, {"LVH": 100.0},
            {"CLBBB": 100.0}, {"NDT": 100.0, "NORM": 50.0}]
    codes = [pool[i % len(pool)] for i in range(200)]
    folds = np.arange(200) % 10 + 1
    d = tmp_path_factory.mktemp("folded")
    n = np.arange(200)
    return (_synthetic(d / "main.h5", codes, folds, n, 0), _synthetic(d / "base.h5", codes, folds, n[::-1], 1),
            _synthetic(d / "base_fwd.h5", codes, folds, n, 1))


def _count_loads(monkeypatch) -> list[str]:
    calls: list[str] = []
    real = models_pkg.load_checkpoint

    def counting(path, *a, **k):
        calls.append(str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(models_pkg, "load_checkpoint", counting)
    return calls


def test_library_zeroshot_auc_is_the_clis_json_figure(stores):
    out = _json("zeroshot", "--task", "superdiagnostic", "--store", stores["a"], "--baseline-store", stores["b"],
                "--split", "all", "--n-boot", "40")
    with EmbeddingStore.open(stores["a"]) as a, EmbeddingStore.open(stores["b"]) as b:
        res = O.zeroshot_on_store(a, task="superdiagnostic", split="all", baseline=b, n_boot=40)
    assert res.main.report is not None and res.baseline is not None
    assert res.main.report.macro_auc == pytest.approx(out["main"]["macro_auc"], abs=1e-12)
    assert [res.main.report.ci_low, res.main.report.ci_high] == pytest.approx(out["main"]["ci95"], abs=1e-12)
    assert res.baseline.report.macro_auc == pytest.approx(out["baseline"]["macro_auc"], abs=1e-12)
    assert res.main.report.macro_auc != pytest.approx(res.baseline.report.macro_auc)  # two different checkpoints
    assert res.n_records == out["n_records"] and sum(res.main.assigned.values()) == res.n_records
    assert json.loads(json.dumps(to_jsonable(res.to_dict()))) == {**out}


def test_free_labels_keep_unmatched_classes_out_of_the_auc(stores):
    with EmbeddingStore.open(stores["a"]) as a:
        res = O.zeroshot_on_store(a, labels="normal ECG,sinus rhythm,chest pain", split="all", n_boot=0)
        Y, unmatched = O.free_class_labels(a, np.arange(len(a)), ["normal ECG", "sinus rhythm", "chest pain"])
    assert unmatched == ["chest pain"] and res.no_ground_truth == ["chest pain"]
    assert Y is not None and Y.shape == (50, 2) and 0 < Y[:, 0].sum() < 50
    assert set(res.main.report.per_class) == {"normal ECG", "sinus rhythm"}
    assert set(res.main.assigned) == {"normal ECG", "sinus rhythm", "chest pain"} and sum(res.main.assigned.values()) == 50


@pytest.mark.parametrize("base, loads", [("b", 2), ("a2", 1)])
def test_zeroshot_command_loads_each_prompt_checkpoint_once(stores, monkeypatch, base, loads):
    # free labels with ground truth used to load a model twice per store (four with a baseline)
    calls = _count_loads(monkeypatch)
    out = _json("zeroshot", "--labels", "normal ECG,sinus rhythm,chest pain", "--store", stores["a"],
                "--baseline-store", stores[base], "--split", "all", "--n-boot", "10")
    assert len(calls) == loads, calls
    assert set(out["baseline"]["per_class"]) == {"normal ECG", "sinus rhythm"}
    if base == "a2":  # same checkpoint, same records: the shared model gives the same figures
        assert out["baseline"]["macro_auc"] == pytest.approx(out["main"]["macro_auc"])


def test_prompt_models_share_one_model_across_calls(stores, monkeypatch):
    calls = _count_loads(monkeypatch)
    models = O.PromptModels()
    with EmbeddingStore.open(stores["a"]) as a, EmbeddingStore.open(stores["b"]) as b:
        for task in ("superdiagnostic", "rhythm"):
            for split in ("all", "test"):
                O.zeroshot_on_store(a, task=task, split=split, baseline=b, n_boot=0, models=models)
    assert len(calls) == 2 and models.loads == 2


def test_probe_on_store_aligns_a_baseline_written_in_another_order(folded):
    main_p, base_p, fwd_p = folded
    t = get_task("superdiagnostic")
    with EmbeddingStore.open(main_p) as m, EmbeddingStore.open(base_p) as b, EmbeddingStore.open(fwd_p) as f:
        res = O.probe_on_store(m, "superdiagnostic", (50, 100), 2, baseline=b)
        rows, Y = O.task_rows(m, t, np.arange(len(m)))
        folds = O.folds_of(m)[rows]
        direct = run_probe(m.ecg(rows), Y, folds, (50, 100), 2, t.classes)
        same_order = run_probe(f.ecg(rows), Y, folds, (50, 100), 2, t.classes)
        assert not np.allclose(b.ecg(rows), f.ecg(rows))  # the reversed store's rows are other records
    assert res.n_records == len(rows) == 200 and res.main.n_test == 20
    assert [r["auc_mean"] for r in res.main.rows] == [r["auc_mean"] for r in direct.rows]
    assert [r["auc_mean"] for r in res.baseline.rows] == [r["auc_mean"] for r in same_order.rows]
    assert res.main.rows[-1]["auc_mean"] > 0.8
    assert set(res.to_dict()) == {"task", "store", "n_records", "main", "baseline", "baseline_store"}


def test_retrieval_leaves_out_records_without_a_report_and_refuses_a_store_of_none(tmp_path):
    """A WFDB folder without header comments gives empty reports: retrieval called every recall@k 1.0
    (one 'unique report', the empty one, matched everything). Empty reports are no queries and no
    hits; fewer than two distinct reports is one line that says why."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    texts = ["" if i % 4 == 0 else f"report {i % 3}" for i in range(40)]
    with EmbeddingStore.create(tmp_path / "some.h5", 8, {"note": "t"}) as s:
        s.append([str(i) for i in range(40)], x, x, texts=texts, labels=[{}] * 40, meta={"strat_fold": [10] * 40})
    with EmbeddingStore.open(tmp_path / "some.h5") as s:
        res = O.retrieval_on_store(s, "test")
        keep = [i for i, t in enumerate(texts) if t]
        want = evaluate_retrieval(x[keep], x[keep], [texts[i] for i in keep])
        assert res.main.ecg_to_report == want["ecg_to_report"] and res.main.n_records == 30
        assert "10 without a report left out" in res.split_note
    with EmbeddingStore.create(tmp_path / "none.h5", 8, {"note": "t"}) as s:
        s.append([str(i) for i in range(40)], x, x, texts=[""] * 40, labels=[{}] * 40, meta={"strat_fold": [10] * 40})
    with EmbeddingStore.open(tmp_path / "none.h5") as s, pytest.raises(DataError, match="0 of the 40 records"):
        O.retrieval_on_store(s, "test")


def test_retrieval_on_store_equals_the_array_function_and_the_cli(folded):
    main_p, base_p, _ = folded
    out = _json("retrieval", "--store", main_p, "--baseline-store", base_p)
    with EmbeddingStore.open(main_p) as m, EmbeddingStore.open(base_p) as b:
        res = O.retrieval_on_store(m, "test", baseline=b)
        rows, note = O.split_rows(m, "test")
        direct = evaluate_retrieval(m.ecg(rows), m.text(rows), m.texts(rows))
    assert note == res.split_note == "test split (strat_fold 10): 20 records"
    assert res.main.ecg_to_report == direct["ecg_to_report"] and res.main.n_unique_reports == 7
    assert {str(k): v for k, v in res.baseline.report_to_ecg.items()} == out["baseline"]["report_to_ecg"]
    assert res.main.to_dict()["ecg_to_report"][1] == out["main"]["ecg_to_report"]["1"]


def test_baseline_missing_records_and_bad_split_are_data_errors(folded, tmp_path):
    codes = [{"NORM": 100.0}] * 20
    other_p = _synthetic(tmp_path / "other.h5", codes, np.arange(20) % 10 + 1, np.arange(20), 2, prefix="x")
    with EmbeddingStore.open(folded[0]) as m, EmbeddingStore.open(other_p) as other:
        with pytest.raises(DataError, match="lacks 20 of the 20 evaluated records"):
            O.retrieval_on_store(m, "test", baseline=other)
        with pytest.raises(DataError, match="unknown split 'train'"):
            O.retrieval_on_store(m, "train")
        with pytest.raises(DataError, match="either --task or --labels"):
            O.zeroshot_on_store(m, task="rhythm", labels="x")


def test_index_stores_each_ecg_norm_so_unit_times_norm_is_the_projection(stores, example_ptbxl):
    """probe --features projection reads unit * ecg_norm: it must be the model's projection before L2."""
    from etp_search.models import load_checkpoint
    from etp_search.pipeline import read_records
    from etp_search.preprocess import get_preset
    from etp_search.readers import open_dataset

    model = load_checkpoint(stores["a"].parent / "cka", load_text=False)
    reader = open_dataset(example_ptbxl)
    refs = reader.refs()
    items = [it.value for chunk in read_records(reader, refs, get_preset(model.cfg.preset),
                                                lambda rec, x, flags: (rec.id, x)) for it in chunk if it.skip is None]
    ids, x = [i for i, _ in items], np.stack([s for _, s in items])
    with torch.inference_mode():
        z = model.encode_ecg(torch.from_numpy(x), normalize=False).numpy()
    with EmbeddingStore.open(stores["a"]) as s:
        rows = np.array([s.row_of(i) for i in ids])
        norms = np.asarray(s.meta("ecg_norm", rows), np.float32)
        np.testing.assert_allclose(norms, np.linalg.norm(z, axis=1), rtol=1e-4)
        np.testing.assert_allclose(s.ecg(rows) * norms[:, None], z, rtol=1e-4, atol=1e-5)
        feats = O.probe_features(s, rows, "auto")
    assert list(feats) == ["unit", "projection"] and len(set(np.round(norms, 3))) > 10
    np.testing.assert_allclose(feats["projection"], z, rtol=1e-4, atol=1e-5)


def test_a_store_without_norms_gets_appended_and_probed_on_unit_vectors(tmp_path, caplog):
    """A store indexed before ecg_norm existed: appends go on without the column, auto falls back to
    the unit vectors with a warning, and --features projection names the fix in one line."""
    from etp_search.export.source import Batch
    from etp_search.export.writer import StoreWriter

    pool = [{"NORM": 100.0}, {"IMI": 100.0}, {"LVH": 100.0}, {"NORM": 100.0, "LVH": 50.0}]
    old = _synthetic(tmp_path / "old.h5", [pool[i % 4] for i in range(120)], np.arange(120) % 10 + 1, np.arange(120), 3)
    with EmbeddingStore.open(old) as s:
        assert "ecg_norm" not in s.meta_columns
        n, dim = len(s), s.dim
    x = np.eye(dim, dtype=np.float32)[:2]
    batch = Batch(["new0", "new1"], np.zeros((2, 12, 4), np.float32), ["NORM", "IMI"], [{"NORM": 100.0}, {"IMI": 100.0}],
                  [{"strat_fold": 3, "ecg_norm": 2.5}, {"strat_fold": 4, "ecg_norm": 1.5}])
    w = StoreWriter(old, dim, {"note": "synthetic"})
    assert w.write(batch, x, x) == 2
    w.close()
    with EmbeddingStore.open(old) as s:
        assert len(s) == n + 2 and "ecg_norm" not in s.meta_columns
        assert s.meta("strat_fold", np.array([n, n + 1])).tolist() == [3, 4]
        with caplog.at_level("WARNING"):
            feats = O.probe_features(s, np.arange(len(s)), "auto")
        assert list(feats) == ["unit"] and "--rebuild" in caplog.text
        with pytest.raises(DataError, match=r"--rebuild.*--features unit"):
            O.probe_features(s, np.arange(len(s)), "projection")
        with pytest.raises(DataError, match="--features takes one of auto, unit, projection"):
            O.probe_features(s, np.arange(len(s)), "raw")
        res = O.probe_on_store(s, "superdiagnostic", (100,), 1)
    assert res.main.candidates == ["unit"] and res.main.rows[0]["features"] == ["unit"]
