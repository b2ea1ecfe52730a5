"""Linear probe on frozen ECG vectors: multi-label one-vs-rest logistic regression.

Protocol (PTB-XL benchmark convention, as in ETP and MERL): train on a stratified fraction
(1 %, 10 %, 100 %) of folds 1-8, choose the L2 strength on fold 9 (validation macro AUC), report
macro ROC-AUC on fold 10 only, mean and std over seeds.

Test labels are kept out of everything but the final score by construction: :func:`run_probe`
fits and selects every probe from the train and validation rows first, and only then slices the
test rows' labels and hands them to :func:`score_probes`. (Tests poison fold-10 labels and check
that the chosen strengths and weights do not move.)

Features: ``X`` is one (N, D) matrix or several named ones (``{"unit": ..., "projection": ...}``).
With several, each (fraction, seed) probe is fitted on every feature set and keeps the one with
the higher validation macro AUC (the first on a tie): the feature set is one more hyperparameter,
chosen on the validation fold with the strength, never on the test fold.

Speed: all classes are fitted jointly as one (D, C) weight matrix with full-batch L-BFGS in torch
(one matrix product per step serves every class), walking the regularisation path from strong
to weak with warm starts, so later, harder fits start near their optimum.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch

from etp_search.errors import DataError
from etp_search.evaluation.metrics import macro_auc

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProbeConfig:
    """How the probe is fitted and selected (saved with results so a number can be reproduced)."""

    #: L2 strengths tried, strongest first (warm-start order); objective per class is
    #: mean BCE + lam/2 * ||w||^2, i.e. sklearn's C = 1 / (lam * n_train).
    lambdas: tuple[float, ...] = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5)
    #: L-BFGS iterations per strength (warm starts make later strengths cheap).
    max_iter: int = 200
    #: stop when the largest gradient entry is below this.
    tol_grad: float = 1e-4
    #: stop the path after this many strengths in a row score below the best on validation.
    patience: int = 2
    #: standardise features with train-subsample mean/std (better conditioning, faster L-BFGS).
    standardize: bool = True
    #: torch threads while fitting. The products here are skinny (N x D by D x C) and memory-bound;
    #: a second thread adds synchronisation that costs more than it saves, and on shared cores a
    #: spin-waiting thread pool slowed small fits 30-100x in measurements on the 2-core dev box.
    threads: int = 1
    #: folds used for training, validation (strength choice) and the reported test score.
    train_folds: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8)
    val_fold: int = 9
    test_fold: int = 10

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LinearProbe:
    """A fitted probe: ``sigmoid(((x - mean) / std) @ weight + bias)``."""

    weight: np.ndarray  # (D, C)
    bias: np.ndarray  # (C,)
    mean: np.ndarray  # (D,)
    std: np.ndarray  # (D,)
    lam: float  # chosen L2 strength
    val_auc: float  # validation macro AUC at that strength
    n_train: int
    features: str = "unit"  # which feature set it reads (see run_probe)

    def decision(self, X: np.ndarray) -> np.ndarray:
        """(N, C) logits; monotone in the probability, so enough for AUC."""
        return ((np.asarray(X, np.float32) - self.mean) / self.std) @ self.weight + self.bias


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def stratified_subsample(Y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted row indices of a seeded ``fraction`` of ``Y`` that keeps every class present.

    First one random positive of every class that has any (rarest class first, so one record
    can cover several), then the rest drawn proportionally from each distinct label set
    (label-powerset stratification; largest remainders, random tie-break).
    """
    n = len(Y)
    if fraction >= 1:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    pos = np.asarray(Y) > 0
    target = max(1, int(round(fraction * n)))
    chosen: list[int] = []
    covered = np.zeros(pos.shape[1], dtype=bool)
    for c in np.argsort(pos.sum(axis=0), kind="stable"):
        if covered[c] or not pos[:, c].any():
            continue
        i = int(rng.choice(np.flatnonzero(pos[:, c])))
        chosen.append(i)
        covered |= pos[i]
    need = target - len(chosen)
    if need > 0:
        rest = np.setdiff1d(np.arange(n), chosen)
        _, group = np.unique(np.packbits(pos[rest], axis=1), axis=0, return_inverse=True)
        group = group.ravel()
        sizes = np.bincount(group)
        quota = sizes * (need / len(rest))
        take = np.floor(quota).astype(int)
        short = need - take.sum()
        if short > 0:  # largest remainders get one more; random jitter breaks ties
            frac = quota - take + rng.random(len(sizes)) * 1e-9
            take[np.argsort(-frac)[:short]] += 1
        order = rng.permutation(len(rest))
        by_group = order[np.argsort(group[order], kind="stable")]
        starts = np.r_[0, np.cumsum(sizes)[:-1]]
        picks = [by_group[s:s + t] for s, t in zip(starts, take) if t]
        chosen.extend(rest[np.concatenate(picks)].tolist() if picks else [])
    return np.sort(np.asarray(chosen, dtype=np.int64))


def fit_path(
    X: np.ndarray, Y: np.ndarray, config: ProbeConfig = ProbeConfig(),
    on_fit: Callable[[tuple[np.ndarray, np.ndarray]], bool] | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Fit the probe along ``config.lambdas`` (strongest first, warm-started); returns (W, b) per strength.

    ``X`` must already be standardised if wanted; labels are 0/1. ``on_fit`` sees each fit as it
    lands and returns True to stop the path early (used to stop once validation AUC falls).
    """
    lambdas = config.lambdas
    Xt = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
    Yt = torch.from_numpy(np.ascontiguousarray(np.asarray(Y) > 0, dtype=np.float32))
    n, d = Xt.shape
    prior = Yt.mean(0).clamp(1.0 / (n + 1), 1 - 1.0 / (n + 1))
    W = torch.zeros(d, Yt.shape[1])
    b = torch.log(prior / (1 - prior))
    path = []
    for lam in lambdas:
        # a fresh optimiser per strength: L-BFGS curvature pairs belong to one objective
        opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=config.max_iter, tolerance_grad=config.tol_grad,
                                tolerance_change=1e-10, history_size=10, line_search_fn="strong_wolfe")

        def closure(lam: float = lam) -> torch.Tensor:
            # hand-written gradient: no autograd graph, and X is read once forward, once backward
            logits = torch.addmm(b, Xt, W)
            # summed over classes, averaged over records: each class is its own sklearn-style problem
            loss = (torch.nn.functional.softplus(logits) - Yt * logits).sum() / n + 0.5 * lam * (W * W).sum()
            resid = (torch.sigmoid(logits) - Yt) / n
            W.grad = Xt.T @ resid + lam * W
            b.grad = resid.sum(0)
            return loss

        opt.step(closure)
        path.append((W.numpy().copy(), b.numpy().copy()))
        if on_fit is not None and on_fit(path[-1]):
            break
    return path


def fit_probe(
    X_train: np.ndarray, Y_train: np.ndarray, X_val: np.ndarray, Y_val: np.ndarray,
    config: ProbeConfig = ProbeConfig(),
) -> LinearProbe:
    """Fit along the regularisation path on train rows and keep the strength with the best validation macro AUC."""
    X_train = np.asarray(X_train, np.float32)
    if config.standardize:
        mean = X_train.mean(axis=0)
        std = X_train.std(axis=0) + 1e-6
    else:
        mean, std = np.zeros(X_train.shape[1], np.float32), np.ones(X_train.shape[1], np.float32)
    # torch, not numpy, for the product: it then obeys the same thread setting as the fit
    Xv = torch.from_numpy((np.asarray(X_val, np.float32) - mean) / std)
    val: list[float] = []

    def track(fit: tuple[np.ndarray, np.ndarray]) -> bool:
        val.append(macro_auc(Y_val, (Xv @ torch.from_numpy(fit[0])).numpy() + fit[1])[0])
        # weaker strengths cost the most L-BFGS steps; stop once validation has fallen
        # `patience` times in a row below the best so far (validation AUC is near-unimodal in lam)
        best_so_far = np.nanmax(val) if not np.all(np.isnan(val)) else np.nan
        recent = val[-config.patience:]
        return len(val) > config.patience and all(v < best_so_far for v in recent)

    path = fit_path((X_train - mean) / std, Y_train, config, on_fit=track)
    # ties (and all-NaN validation) resolve to the strongest regularisation, the earliest in the path
    best = int(np.nanargmax(val)) if not np.all(np.isnan(val)) else 0
    W, b = path[best]
    return LinearProbe(W, b, mean.astype(np.float32), std.astype(np.float32), config.lambdas[best],
                       float(val[best]), len(X_train))


def score_probes(probes: dict[tuple[float, int], LinearProbe], X_test: np.ndarray | Mapping[str, np.ndarray],
                 Y_test: np.ndarray) -> dict:
    """The only place test labels are read: macro AUC (and per-class AUC) of each fitted probe."""
    out = {}
    for key, probe in probes.items():
        X = X_test[probe.features] if isinstance(X_test, Mapping) else X_test
        macro, per_class, skipped = macro_auc(Y_test, probe.decision(X))
        out[key] = (macro, per_class, skipped)
    return out


@dataclass
class ProbeResult:
    """Test macro AUC per training fraction (mean/std over seeds) plus everything needed to audit it."""

    classes: list[str]
    rows: list[dict[str, Any]]  # one per fraction: fraction_pct, auc_mean, auc_std, per-seed detail
    per_class: dict[float, dict[str, float]]  # fraction -> class -> test AUC averaged over seeds
    skipped: list[str]  # classes without positives or negatives in the test fold
    untrainable: list[str]  # classes without positives in the training folds
    probes: dict[tuple[float, int], LinearProbe] = field(repr=False, default_factory=dict)
    config: ProbeConfig = field(default_factory=ProbeConfig)
    n_test: int = 0
    candidates: list[str] = field(default_factory=lambda: ["unit"])  # feature sets the probes chose from

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "per_class": {str(k): v for k, v in self.per_class.items()},
            "skipped": self.skipped,
            "untrainable": self.untrainable,
            "n_test": self.n_test,
            "candidates": self.candidates,
            "config": self.config.to_dict(),
        }


def _fit_all(probes: dict, X: Mapping[str, np.ndarray], Y_train: np.ndarray, train: np.ndarray, val: np.ndarray,
             Y_val: np.ndarray, fractions: Sequence[float], seeds: int, config: ProbeConfig,
             progress: bool = False) -> None:
    """Fit every (fraction, seed) probe on each feature set from training and validation rows only;
    keep, per probe, the feature set with the best validation macro AUC (the first on a tie)."""
    from tqdm import tqdm

    grid = [(fraction, seed) for fraction in fractions for seed in range(seeds)]
    for fraction, seed in tqdm(grid, unit="fit", desc="probe", disable=not progress, leave=False):
        if fraction >= 100 and seed > 0:  # the full training set and L-BFGS are deterministic
            probes[(fraction, seed)] = probes[(fraction, 0)]
            continue
        local = stratified_subsample(Y_train, fraction / 100.0, seed)
        best: LinearProbe | None = None
        for name, Xf in X.items():
            fit = fit_probe(Xf[train[local]], Y_train[local], Xf[val], Y_val, config)
            fit.features = name
            if best is None or fit.val_auc > best.val_auc:
                best = fit
        assert best is not None
        probes[(fraction, seed)] = best
        logger.debug("probe fraction=%s%% seed=%d: n=%d features=%s lam=%g val=%.4f", fraction, seed, len(local),
                     best.features, best.lam, best.val_auc)


def run_probe(
    X: np.ndarray | Mapping[str, np.ndarray],
    Y: np.ndarray,
    folds: np.ndarray,
    fractions: Sequence[float] = (1, 10, 100),
    seeds: int = 3,
    classes: Sequence[str] | None = None,
    config: ProbeConfig = ProbeConfig(),
    progress: bool = False,
) -> ProbeResult:
    """Linear-probe protocol on cached vectors.

    Args:
        X: (N, D) ECG vectors, or named feature sets of N rows each to choose from on the
            validation fold (see the module docstring).
        Y: (N, C) multi-hot labels; fold-``test_fold`` rows are read only for the final score.
        folds: (N,) strat_fold per row; rows outside train/val/test folds are ignored.
        fractions: training fractions in percent of the training folds.
        seeds: number of seeds (0..seeds-1) for the subsample.
        classes: class names (default "0", "1", ...).
        progress: show a tqdm bar (stderr) over the fits.

    Raises:
        DataError: when the train, validation or test fold is empty.
    """
    feats = {k: np.asarray(v, np.float32) for k, v in X.items()} if isinstance(X, Mapping) else \
        {"unit": np.asarray(X, np.float32)}
    if not feats:
        raise ValueError("run_probe needs at least one feature set")
    folds = np.asarray(folds)
    n_cls = np.asarray(Y).shape[1]
    classes = list(classes) if classes is not None else [str(i) for i in range(n_cls)]
    train = np.flatnonzero(np.isin(folds, config.train_folds))
    val = np.flatnonzero(folds == config.val_fold)
    test = np.flatnonzero(folds == config.test_fold)
    for name, fold_rows in (("training", train), ("validation", val), ("test", test)):
        if not len(fold_rows):
            raise DataError(f"the linear probe needs strat_fold {config.train_folds[0]}-{config.test_fold} "
                            f"but the {name} fold has no records; index a dataset with folds (e.g. PTB-XL)")
    Y_train, Y_val = np.asarray(Y)[train], np.asarray(Y)[val]  # test rows stay untouched here
    untrainable = [classes[c] for c in np.flatnonzero(~(Y_train > 0).any(axis=0))]
    probes: dict[tuple[float, int], LinearProbe] = {}
    with _torch_threads(config.threads):
        _fit_all(probes, feats, Y_train, train, val, Y_val, fractions, seeds, config, progress)
    scores = score_probes(probes, {k: v[test] for k, v in feats.items()}, np.asarray(Y)[test])
    rows: list[dict[str, Any]] = []
    per_class: dict[float, dict[str, float]] = {}
    skipped = sorted({classes[i] for v in scores.values() for i in v[2]}, key=classes.index)
    for fraction in fractions:
        aucs = np.array([scores[(fraction, s)][0] for s in range(seeds)])
        pcs = np.array([scores[(fraction, s)][1] for s in range(seeds)])
        per_class[fraction] = {c: float(a) for c, a in zip(classes, pcs.mean(axis=0))}
        rows.append({
            "fraction_pct": fraction,
            "auc_mean": float(aucs.mean()),
            "auc_std": float(aucs.std(ddof=1)) if seeds > 1 else 0.0,
            "seeds": seeds,
            "n_train": [probes[(fraction, s)].n_train for s in range(seeds)],
            "lambda": [probes[(fraction, s)].lam for s in range(seeds)],
            "val_auc": [probes[(fraction, s)].val_auc for s in range(seeds)],
            "features": [probes[(fraction, s)].features for s in range(seeds)],
            "test_auc": aucs.tolist(),
        })
    return ProbeResult(classes, rows, per_class, skipped, untrainable, probes, config, len(test), list(feats))
