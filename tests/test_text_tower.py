"""The report tower: an ordinary frozen submodule, length-sorted distinct batches, one thread per query."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from etp_search.models import EcgEncoderConfig, EtpConfig, EtpModel, TextEncoderConfig, load_checkpoint, save_checkpoint
from etp_search.models.checkpoint import default_checkpoint

TEXTS = [
    "sinus rhythm",
    "sinus rhythm, left ventricular hypertrophy, possible inferior myocardial infarction, "
    "non-specific ST depression, ventricular premature complex",
    "atrial fibrillation",
    "sinus rhythm",
    "normal ECG, sinus bradycardia, left anterior fascicular block",
    "atrial fibrillation",
]


@pytest.fixture(scope="module")
def shipped() -> EtpModel:
    return load_checkpoint(default_checkpoint())


def _plain_features(model: EtpModel, texts: list[str]) -> torch.Tensor:
    """One padded batch in input order, straight through the HF model: the pre-batching reference."""
    enc = model.text
    batch = enc.tokenize(texts)
    with torch.no_grad():
        states = enc.hf(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
    return (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def test_shipped_checkpoint_gives_the_plain_padded_vectors(shipped: EtpModel) -> None:
    with torch.no_grad():
        got = shipped.encode_text(TEXTS)
        want = shipped.encode_text_features(_plain_features(shipped, TEXTS))
        one = torch.cat([shipped.encode_text([t]) for t in TEXTS])
        feats = shipped.text_features(TEXTS)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(one, want, atol=1e-5, rtol=1e-5)
    assert torch.equal(feats[0], feats[3]) and torch.equal(feats[2], feats[5])  # duplicates encoded once


def test_distinct_texts_go_longest_first_in_batches(shipped: EtpModel) -> None:
    enc = shipped.text
    seen: list[torch.Tensor] = []
    handle = enc.hf.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["attention_mask"].clone()), with_kwargs=True)
    old = enc.batch_size
    enc.batch_size = 2
    try:
        with torch.no_grad():
            shipped.encode_text(TEXTS * 3)
    finally:
        enc.batch_size = old
        handle.remove()
    assert sum(len(m) for m in seen) == len(set(TEXTS)) == 4
    assert all(len(m) <= 2 for m in seen)
    widths = [m.shape[1] for m in seen]
    assert widths == sorted(widths, reverse=True)
    assert all(bool(m[:, -1].any()) for m in seen)  # no batch pads past its own longest text


def test_a_single_query_runs_on_one_thread_and_restores_the_count(shipped: EtpModel) -> None:
    enc = shipped.text
    during: list[int] = []
    handle = enc.hf.register_forward_pre_hook(lambda m, a: during.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.no_grad():
            shipped.encode_text(["atrial fibrillation"])
            shipped.encode_text(["atrial fibrillation", "sinus rhythm"])
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
        handle.remove()
    assert during == [1, 2] and after == 2


def test_frozen_tower_follows_double_and_half_and_stays_out_of_the_state() -> None:
    cfg = EtpConfig(ecg=EcgEncoderConfig("test_tiny"), embed_dim=16)
    model = EtpModel(cfg).eval()
    keys = set(model.state_dict())
    with torch.no_grad():
        ref = model.encode_text(TEXTS[:3])
        model.double()
        assert next(model.text.hf.parameters()).dtype == torch.float64
        torch.testing.assert_close(model.encode_text(TEXTS[:3]).float(), ref, atol=1e-5, rtol=1e-4)
        model.half()
        assert next(model.text.hf.parameters()).dtype == torch.float16
    assert set(model.state_dict()) == keys and not any(k.startswith("text_encoder") for k in keys)
    assert not any(p.requires_grad for p in model.text.parameters())


def test_the_callers_config_is_not_mutated() -> None:
    cfg = EtpConfig(ecg=EcgEncoderConfig("test_tiny"), embed_dim=16)
    before = cfg.to_dict()
    assert not cfg.text.width
    model = EtpModel(cfg, load_text=False)
    assert cfg.to_dict() == before and model.cfg.text.width == 384
    assert not model.text_loaded
    model.text  # noqa: B018 - loads the deferred tower
    assert model.text_loaded and not any(k.startswith("text_encoder") for k in model.state_dict())


def test_resaving_the_shipped_checkpoint_keeps_its_keys_and_size(shipped: EtpModel, tmp_path: Path) -> None:
    src = default_checkpoint() / "model.safetensors"
    out = save_checkpoint(shipped, tmp_path / "ck", dtype=json.loads((default_checkpoint() / "config.json").read_text())["weights_dtype"])
    with safe_open(str(src), "pt") as a, safe_open(str(out / "model.safetensors"), "pt") as b:
        assert set(a.keys()) == set(b.keys())
    # No text tower in the file (it alone would be ~90 MB): the same bytes as the shipped file, give
    # or take the header.
    assert abs((out / "model.safetensors").stat().st_size - src.stat().st_size) < 64 * 1024
    again = load_checkpoint(out)
    with torch.no_grad():
        torch.testing.assert_close(again.encode_text(TEXTS), shipped.encode_text(TEXTS))


def test_trainable_tower_still_gets_gradients_through_the_sorted_batches() -> None:
    cfg = EtpConfig(ecg=EcgEncoderConfig("test_tiny"), embed_dim=16, text=TextEncoderConfig(trainable_layers=1))
    model = EtpModel(cfg).eval()
    feats = model.text_features(TEXTS)
    assert feats.requires_grad
    torch.testing.assert_close(feats.detach(), _plain_features(model, TEXTS), atol=1e-5, rtol=1e-5)
    feats.sum().backward()
    grads = [p.grad for n, p in model.text.named_parameters() if p.requires_grad]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
