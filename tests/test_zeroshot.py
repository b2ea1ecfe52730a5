"""Zero-shot scoring, prompt ensembling, shipped prompt sets and prompt-file validation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from etp_search.errors import DataError, EtpError
from etp_search.evaluation import prompts as P
from etp_search.evaluation import zeroshot as Z
from etp_search.labels import get_task, list_tasks


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _planted(n=600, d=64, c=4, seed=0, strength=1.0):
    rng = np.random.default_rng(seed)
    dirs = _unit(rng.normal(size=(c, d)))
    Y = (rng.random((n, c)) < 0.25).astype(np.float32)
    X = _unit(rng.normal(size=(n, d)) / np.sqrt(d) + strength * Y @ dirs)
    prompts = {f"c{i}": np.stack([dirs[i] + 0.05 * rng.normal(size=d), dirs[i] + 0.05 * rng.normal(size=d)])
               for i in range(c)}
    return X, Y, prompts


def test_planted_class_direction_gives_auc_near_one():
    X, Y, prompts = _planted()
    rep = Z.evaluate(X, Y, prompts, n_boot=200)
    assert rep.macro_auc > 0.97
    assert rep.ci_low <= rep.macro_auc <= rep.ci_high
    assert rep.skipped == [] and set(rep.per_class) == set(prompts)


def test_random_embeddings_give_auc_near_half():
    X, Y, prompts = _planted(n=2000, strength=0.0)
    rep = Z.evaluate(X, Y, prompts, n_boot=100)
    assert abs(rep.macro_auc - 0.5) < 0.05


def test_class_absent_from_split_is_reported_not_crashed():
    X, Y, prompts = _planted()
    Y[:, 1] = 0
    rep = Z.evaluate(X, Y, prompts, n_boot=50)
    assert rep.skipped == ["c1"] and np.isnan(rep.per_class["c1"]) and rep.macro_auc > 0.9


def test_prompt_ensembling_averages_normalised_vectors():
    a, b = np.array([[3.0, 0.0]]), np.array([[0.0, 0.5]])
    emb = Z.class_embeddings({"x": np.concatenate([a, b])})
    np.testing.assert_allclose(emb[0], _unit(np.array([1.0, 1.0])), atol=1e-6)
    s = Z.scores(np.array([[1.0, 0.0]]), {"x": np.concatenate([a, b]), "y": b})
    np.testing.assert_allclose(s, [[np.sqrt(0.5), 0.0]], atol=1e-6)


def test_encode_prompts_keeps_class_grouping():
    class Fake:
        def encode_text(self, texts, normalize=True):
            import torch

            return torch.tensor([[float(len(t)), 1.0] for t in texts])

    out = Z.encode_prompts(Fake(), {"a": ["xx", "yyy"], "b": ["z"]}, batch_size=2)
    assert out["a"].shape == (2, 2) and out["b"].shape == (1, 2)
    assert out["a"][1, 0] == 3.0 and out["b"][0, 0] == 1.0


@pytest.mark.parametrize("name", list_tasks())
def test_every_task_has_default_and_ensemble_prompts(name):
    task = get_task(name)
    for prompt_set in ("default", "ensemble"):
        cp = P.class_prompts(task, prompt_set)
        assert list(cp) == task.classes
        assert all(cp[c] and all(isinstance(p, str) and p for p in cp[c]) for c in task.classes)
    assert P.class_prompts(task, "default") == {c: [task.description[c]] for c in task.classes}
    assert Z.class_prompts(name, "ensemble") == P.class_prompts(task, "ensemble")  # a task name works too


@pytest.mark.parametrize("name", ["superdiagnostic", "subdiagnostic", "rhythm", "form", "cpsc2018"])
def test_shipped_prompt_files_cover_exactly_their_task(name):
    pf = P.load_prompt_file(P.PROMPT_DIR / f"{name}.json")
    assert sorted(pf.classes) == sorted(get_task(name).classes)
    ens = P.class_prompts(get_task(name), "ensemble")
    assert all(len(v) >= 2 for v in ens.values())  # description plus hand-written phrasings


def test_user_prompt_file(tmp_path):
    task = get_task("rhythm")
    f = tmp_path / "p.json"
    f.write_text(json.dumps({"classes": {"AFIB": ["afib", "irregular"], "SR": "sinus"}}))
    cp = P.class_prompts(task, f)
    assert cp["AFIB"] == ["afib", "irregular"] and cp["SR"] == ["sinus"]
    assert cp["STACH"] == [task.description["STACH"]]


@pytest.mark.parametrize("content, match", [
    ("not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"class": {}}', "unknown key"),
    ('{"classes": {}}', "non-empty \\\"classes\\\""),
    ('{"classes": {"AFIB": []}}', "class 'AFIB'"),
    ('{"classes": {"AFIB": [""]}}', "non-empty strings"),
    ('{"classes": {"AFIB": "x"}, "templates": ["no placeholder"]}', "description"),
    ('{"classes": {"NOPE": "x"}}', "not in task 'rhythm'"),
])
def test_bad_prompt_files_fail_in_one_line(tmp_path, content, match):
    f = tmp_path / "bad.json"
    f.write_text(content)
    with pytest.raises(DataError, match=match) as exc:
        P.class_prompts(get_task("rhythm"), f)
    assert "\n" not in str(exc.value) and str(f) in str(exc.value)


def test_missing_prompt_file_and_unknown_task():
    with pytest.raises(DataError, match="not found"):
        P.class_prompts(get_task("rhythm"), "/nonexistent/prompts.json")
    with pytest.raises(EtpError, match="known tasks"):
        get_task("superdiagnostics")


def test_free_labels_match_store_keys_by_code_or_description():
    st = {"AFIB": "atrial fibrillation", "SR": "sinus rhythm", "NORM": "normal ECG"}
    classes = list(P.free_label_prompts("atrial fibrillation, sr,  ,chest pain"))
    assert classes == ["atrial fibrillation", "sr", "chest pain"]
    m = P.match_label_keys(classes, {"AFIB", "SR", "NORM"}, st)
    assert m == {"atrial fibrillation": "AFIB", "sr": "SR", "chest pain": None}
    with pytest.raises(DataError, match="--labels"):
        P.free_label_prompts(" , ")


def test_assign_counts_sum_to_records():
    X, _, prompts = _planted(n=100)
    counts = Z.assign_counts(X, prompts)
    assert sum(counts.values()) == 100 and list(counts) == list(prompts)


# --- issue 11 item 10: the README's own prompt-file example works as documented --------------

def _readme_prompt_example() -> str:
    """The ```json block under README.md's "**Prompt files**" paragraph, verbatim."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("**Prompt files**"):]
    return section[section.index("```json\n") + len("```json\n"):section.index("\n```", section.index("```json"))]


def test_readme_prompt_file_example_verbatim(tmp_path):
    f = tmp_path / "prompts.json"
    f.write_text(_readme_prompt_example(), encoding="utf-8")
    task = get_task("rhythm")
    cp = P.class_prompts(task, f)
    # no templates: the phrases are the prompts, and a class left out gets its description
    assert cp["AFIB"] == ["atrial fibrillation", "irregularly irregular rhythm"]
    assert cp["SR"] == ["sinus rhythm"]
    assert cp["STACH"] == [task.description["STACH"]]
    # without a task (zeroshot --prompts FILE on any store) the file's classes carry the same prompts
    assert P.load_prompt_file(f).classes["AFIB"] == cp["AFIB"]
    # the templates the README then shows wrap every phrase of a listed class and a left-out description
    f.write_text(json.dumps({**json.loads(_readme_prompt_example()), "templates": ["{}", "a tracing of {}"]}))
    cp = P.class_prompts(task, f)
    assert cp["AFIB"][:2] == ["atrial fibrillation", "a tracing of atrial fibrillation"]
    assert cp["STACH"] == [task.description["STACH"], f"a tracing of {task.description['STACH']}"]


@pytest.mark.parametrize("template", ["ECG showing {}", "ECG showing {description}"])
def test_both_placeholders_mean_the_phrase(tmp_path, template):
    f = tmp_path / "p.json"
    f.write_text(json.dumps({"classes": {"AFIB": ["afib {x}", "a\\1"]}, "templates": ["{}", template]}))
    cp = P.class_prompts(get_task("rhythm"), f)
    # braces or backslashes inside a phrase are text, never placeholders
    assert cp["AFIB"] == ["afib {x}", "ECG showing afib {x}", "a\\1", "ECG showing a\\1"]


def test_ensemble_keeps_its_shipped_prompts_and_default_templates():
    task = get_task("diagnostic")  # no shipped file: every class goes through DEFAULT_TEMPLATES
    cp = P.class_prompts(task, "ensemble")
    c = task.classes[0]
    assert cp[c] == [task.description[c], f"ECG showing {task.description[c]}",
                     f"an electrocardiogram with {task.description[c]}"]
