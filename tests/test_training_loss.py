"""ClipLoss: matches a hand-written CLIP loss; identical texts are not negatives."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training.loss import ClipLoss


def _reference(e, t, s):
    logits = s * e @ t.T
    labels = torch.arange(len(e))
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def test_matches_reference_clip_loss():
    torch.manual_seed(0)
    e, t = F.normalize(torch.randn(8, 16), dim=1), F.normalize(torch.randn(8, 16), dim=1)
    out = ClipLoss()(e, t, torch.tensor(14.0))["contrastive_loss"]
    torch.testing.assert_close(out, _reference(e, t, 14.0))


def test_perfect_alignment_has_low_loss():
    e = torch.eye(6)
    assert ClipLoss()(e, e.clone(), torch.tensor(100.0))["contrastive_loss"] < 1e-6
