"""ClipLoss: matches a hand-written CLIP loss; identical texts are not negatives."""

from __future__ import annotations

import pytest
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


# -- multi-positive targets -----------------------------------------------------------------------

from training.loss import match_matrix, soft_targets  # noqa: E402


def _sets(rows, width):
    m = torch.zeros(len(rows), width)
    for i, r in enumerate(rows):
        m[i, list(r)] = 1.0
    return m


def test_identity_targets_with_a_duplicate_report_equal_the_analytic_loss():
    """Pairs 0 and 1 share one report: each text's row must count both ECGs as positives."""
    torch.manual_seed(3)
    e = F.normalize(torch.randn(3, 8), dim=1)
    t0, t2 = F.normalize(torch.randn(2, 8), dim=1)
    t = torch.stack([t0, t0, t2])
    sets = _sets([{0, 1}, {0, 1}, {2}], 3)
    s = 10.0
    got = ClipLoss(targets="identity")(e, t, torch.tensor(s), ecg_sets=sets, text_sets=sets)["contrastive_loss"]
    # by hand: ECG->text rows put 1/2 on the two equal columns, text->ECG rows likewise on ECGs 0 and 1
    L = s * e @ t.T
    ls_e = torch.log_softmax(L, 1)
    ls_t = torch.log_softmax(L.T, 1)
    ecg_dir = (-(0.5 * ls_e[0, 0] + 0.5 * ls_e[0, 1]) - (0.5 * ls_e[1, 0] + 0.5 * ls_e[1, 1]) - ls_e[2, 2]) / 3
    txt_dir = (-(0.5 * ls_t[0, 0] + 0.5 * ls_t[0, 1]) - (0.5 * ls_t[1, 0] + 0.5 * ls_t[1, 1]) - ls_t[2, 2]) / 3
    torch.testing.assert_close(got, 0.5 * (ecg_dir + txt_dir))
    # With identical text vectors the hard-label loss summed over the duplicated rows is the same
    # number: identity targets only matter where the text tower is not deterministic.
    torch.testing.assert_close(ClipLoss()(e, t, torch.tensor(s))["contrastive_loss"], got)


def test_jaccard_loss_with_overlapping_reports_equals_the_analytic_value():
    """Reports {SR, NORM} and {SR, LVH} share one of three statements: weight 1/3 off the diagonal."""
    torch.manual_seed(4)
    e, t = F.normalize(torch.randn(3, 8), dim=1), F.normalize(torch.randn(3, 8), dim=1)
    sets = _sets([{0, 1}, {0, 2}, {3}], 4)
    s = 7.0
    got = ClipLoss(targets="jaccard")(e, t, torch.tensor(s), ecg_sets=sets, text_sets=sets)["contrastive_loss"]
    w = torch.tensor([[1, 1 / 3, 0], [1 / 3, 1, 0], [0, 0, 1.0]])
    p = w / w.sum(1, keepdim=True)  # symmetric, so both directions use p
    L = s * e @ t.T
    want = 0.5 * (-(p * torch.log_softmax(L, 1)).sum(1).mean() - (p * torch.log_softmax(L.T, 1)).sum(1).mean())
    torch.testing.assert_close(got, want)
    assert abs(float(ClipLoss()(e, t, torch.tensor(s))["contrastive_loss"]) - float(got)) > 1e-3


def test_jaccard_rows_sum_to_one_and_weigh_overlapping_reports():
    # statements: 0 sinus rhythm, 1 normal ECG, 2 LVH, 3 atrial fibrillation
    reports = _sets([{0, 1}, {0, 2}, {3}, {0, 1}], 4)
    m = match_matrix(reports, reports, "jaccard")
    p = soft_targets(m)
    torch.testing.assert_close(p.sum(1), torch.ones(4))
    assert p[0, 3] == p[0, 0] > p[0, 1] > 0  # identical report: full weight; one shared statement: less
    assert p[0, 2] == 0 and p[2, 2] == 1.0  # no overlap: no mass; the AFIB record has only itself
    torch.testing.assert_close(m[0, 1], torch.tensor(1 / 3))


def test_subset_targets_for_sampled_statements():
    """A sampled statement text is a positive of every ECG whose record has that statement."""
    ecg_sets = _sets([{0, 3}, {0, 1}, {3, 2}], 4)
    text_sets = _sets([{3}, {0}, {2}], 4)  # record 0 shows "AFIB", 1 shows "SR", 2 shows "LVH"
    m = match_matrix(ecg_sets, text_sets, "subset")
    assert m.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]
    pt = soft_targets(m.T)  # text "AFIB" -> ECGs 0 and 2, half each
    assert pt[0].tolist() == [0.5, 0.0, 0.5]


def test_soft_targets_need_the_sets():
    e = F.normalize(torch.randn(4, 8), dim=1)
    with pytest.raises(ValueError, match="statement sets"):
        ClipLoss(targets="jaccard")(e, e, torch.tensor(1.0))
    with pytest.raises(ValueError, match="unknown targets"):
        ClipLoss(targets="nope")
