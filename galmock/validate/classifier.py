"""The multi-model classifier test (GalaxyFlow, Lim et al. 2022, section 5.3 and appendix A).

An N-class MLP learns to tell N upsamplers apart from their draws. Evaluated on held-out
simulation particles ("test"), ``LP(C) = mean_i log p(C | x_i)`` ranks the upsamplers: with equal
class priors, ``LP(a) - LP(b)`` is the mean log-likelihood ratio of upsampler a over b on the test
particles, so the larger (less negative) LP is closer to the simulation.

Training follows the paper: LeakyReLU MLP (default 2048-1024-128-128), softmax cross-entropy,
Adam, a held-out share of the draws (default half) for validation and early stopping after
``patience_epochs`` epochs without a lower validation loss; the weights of the best epoch are
kept. Classes with different draw counts are subsampled to the smallest count (a random subset,
fixed by the seed) so the priors are equal, as the LP interpretation needs. Inputs are
standardised with the pooled training draws' mean and std. On CPU, the same samples and settings
give the same classifier bit for bit (seeded ``torch.Generator`` for initialisation and
shuffling).

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> draws = {"a": rng.normal(0, 1, (2000, 2)), "b": rng.normal(3, 1, (2000, 2))}
    >>> clf = train_classifier(draws, ClassifierSettings(hidden=(16,), patience_epochs=3,
    ...                                                  max_epochs=20, batch_size=256,
    ...                                                  threads=1))  # 1 s even on a busy CPU
    >>> pairwise_auc(clf)[("a", "b")] > 0.95
    True
    >>> [s.label for s in lp_scores(clf, rng.normal(0, 1, (500, 2)))]
    ['a', 'b']
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats import rankdata
from torch import nn

from galmock.errors import InputError

__all__ = [
    "ClassifierSettings",
    "LPScore",
    "TrainedClassifier",
    "lp_difference",
    "lp_scores",
    "pairwise_auc",
    "roc_auc",
    "train_classifier",
]

_EVAL_ROWS = 65536  # rows per forward pass when evaluating (bounds memory, not results)


@dataclass(frozen=True)
class ClassifierSettings:
    """Classifier architecture and training (paper defaults).

    ``device``: "cpu", "cuda", ... or "auto" (CUDA when available). ``threads``: set
    ``torch.set_num_threads`` for the training (None: leave it). ``min_improvement``: a
    validation loss counts as better only if below the best by more than this (0: any decrease).
    """

    hidden: tuple[int, ...] = (2048, 1024, 128, 128)
    learning_rate: float = 1e-3
    batch_size: int = 1024
    validation_fraction: float = 0.5
    patience_epochs: int = 100
    max_epochs: int = 100000
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    min_improvement: float = 0.0


@dataclass
class TrainedClassifier:
    """The trained MLP (best validation epoch) with its input standardisation.

    ``history`` holds "train_loss" and "validation_loss" per epoch (epoch 0 first); training
    stopped after epoch ``best_epoch + patience_epochs`` unless ``max_epochs`` came first.
    ``validation`` maps each label to log p(C | x) (n_k, K) of that class's held-out draws.
    """

    labels: list[str]
    history: dict[str, list[float]]
    best_epoch: int
    model: nn.Module
    mean: np.ndarray
    std: np.ndarray
    validation: dict[str, np.ndarray] = field(default_factory=dict)

    def log_proba(self, x: np.ndarray) -> np.ndarray:
        """(n, K) float64 log p(C | x), columns in ``labels`` order; rows logsumexp to 0."""
        x = _rows(x, "classifier input", len(self.mean))
        z = (x - self.mean) / self.std
        device = next(self.model.parameters()).device
        out = []
        self.model.eval()
        with torch.inference_mode():
            for s in range(0, len(z), _EVAL_ROWS):
                batch = torch.as_tensor(z[s : s + _EVAL_ROWS], dtype=torch.float32, device=device)
                out.append(torch.log_softmax(self.model(batch).double(), dim=1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.labels)))


@dataclass(frozen=True)
class LPScore:
    """LP(C) = mean over test particles of log p(C | x), and its standard error."""

    label: str
    mean: float
    stderr: float


def train_classifier(
    samples: Mapping[str, np.ndarray], settings: ClassifierSettings
) -> TrainedClassifier:
    """Train an N-class MLP on ``samples`` (label -> (n_k, d) draws of that upsampler)."""
    labels, train, valid = _split(samples, settings)
    device = _device(settings.device)
    old_threads = torch.get_num_threads()
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    try:
        return _train(labels, train, valid, settings, device)
    finally:
        if settings.threads is not None:
            torch.set_num_threads(old_threads)


def lp_scores(clf: TrainedClassifier, test: np.ndarray) -> list[LPScore]:
    """LP(C) with its standard error (std / sqrt(n_test)) for every class, in label order."""
    lp = clf.log_proba(test)
    if len(lp) < 2:
        raise InputError(f"LP scores need at least 2 test particles, got {len(lp)}")
    se = lp.std(axis=0, ddof=1) / np.sqrt(len(lp))
    return [
        LPScore(label, float(lp[:, k].mean()), float(se[k])) for k, label in enumerate(clf.labels)
    ]


def lp_difference(clf: TrainedClassifier, test: np.ndarray, a: str, b: str) -> tuple[float, float]:
    """Mean of log p(a|x) - log p(b|x) over the test particles and its paired standard error.

    Pairing removes the per-particle variation the two columns share, so this SE is the right
    one for "a beats b by k standard errors" (tighter than combining the two LP errors). It
    covers the test particles' noise only: a classifier trained on two identical upsamplers
    still has a small bias (~0.01 nats for 4000 draws per class in tests), which can be several
    SEs when the SE is tiny; read differences of that size as ties.
    """
    lp = clf.log_proba(test)
    if len(lp) < 2:
        raise InputError(f"LP difference needs at least 2 test particles, got {len(lp)}")
    diff = lp[:, _index(clf, a)] - lp[:, _index(clf, b)]
    return float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(len(diff)))


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties 1/2
    (the Mann-Whitney U statistic over n_pos * n_neg).

    Example:
        >>> roc_auc(np.array([2.0, 3.0]), np.array([1.0, 2.0]))
        0.875
    """
    pos = np.asarray(positive, dtype=np.float64).ravel()
    neg = np.asarray(negative, dtype=np.float64).ravel()
    if pos.size == 0 or neg.size == 0:
        raise InputError(f"ROC AUC needs both classes, got {pos.size} and {neg.size} scores")
    if not (np.all(np.isfinite(pos)) and np.all(np.isfinite(neg))):
        raise InputError("ROC AUC scores contain non-finite values")
    ranks = rankdata(np.concatenate([pos, neg]))  # average ranks: ties count 1/2
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def pairwise_auc(clf: TrainedClassifier) -> dict[tuple[str, str], float]:
    """AUC of log p(a|x) - log p(b|x) separating a's validation draws from b's, for each pair
    (a, b) with a before b in ``labels`` (AUC(b, a) = 1 - AUC(a, b))."""
    out = {}
    for a, b in itertools.combinations(clf.labels, 2):
        ia, ib = _index(clf, a), _index(clf, b)
        score_a = clf.validation[a][:, ia] - clf.validation[a][:, ib]
        score_b = clf.validation[b][:, ia] - clf.validation[b][:, ib]
        out[(a, b)] = roc_auc(score_a, score_b)
    return out


def _split(
    samples: Mapping[str, np.ndarray], settings: ClassifierSettings
) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """Equal-size classes (random subset of the larger ones), then a per-class
    training/validation split."""
    labels = list(samples)
    if len(labels) < 2:
        raise InputError(f"the classifier needs at least 2 upsamplers, got {labels}")
    if not 0.0 < settings.validation_fraction < 1.0:
        raise InputError(
            f"classifier validation_fraction must be in (0, 1), got {settings.validation_fraction}"
        )
    arrays = [_rows(samples[label], f"samples[{label!r}]", None) for label in labels]
    dims = {a.shape[1] for a in arrays}
    if len(dims) != 1:
        raise InputError(f"classifier samples have different column counts: {sorted(dims)}")
    n = min(len(a) for a in arrays)
    n_valid = round(settings.validation_fraction * n)
    if n_valid < 1 or n - n_valid < 1:
        raise InputError(
            f"classifier: {n} samples per class leave no training or validation rows "
            f"(validation_fraction {settings.validation_fraction})"
        )
    rng = np.random.default_rng(settings.seed)
    train, valid = [], []
    for a in arrays:
        pick = rng.permutation(len(a))[:n]
        valid.append(a[pick[:n_valid]])
        train.append(a[pick[n_valid:]])
    return labels, train, valid


def _train(
    labels: list[str],
    train: list[np.ndarray],
    valid: list[np.ndarray],
    settings: ClassifierSettings,
    device: torch.device,
) -> TrainedClassifier:
    pooled = np.concatenate(train)
    mean, std = pooled.mean(axis=0), pooled.std(axis=0)
    std = np.where(std > 0, std, 1.0)  # a constant column carries no information; keep it finite

    def tensors(parts: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.as_tensor((np.concatenate(parts) - mean) / std, dtype=torch.float32)
        y = torch.cat([torch.full((len(p),), k, dtype=torch.long) for k, p in enumerate(parts)])
        return x.to(device), y.to(device)

    x_train, y_train = tensors(train)
    x_valid, y_valid = tensors(valid)
    gen = torch.Generator().manual_seed(settings.seed)
    model = _mlp(pooled.shape[1], settings.hidden, len(labels), gen).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    loss_fn = nn.CrossEntropyLoss()
    history: dict[str, list[float]] = {"train_loss": [], "validation_loss": []}
    best_loss, best_epoch, best_state = np.inf, 0, copy.deepcopy(model.state_dict())
    for epoch in range(settings.max_epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=gen).to(device)
        total = torch.zeros((), dtype=torch.float64, device=device)  # no per-batch GPU sync
        for s in range(0, len(order), settings.batch_size):
            idx = order[s : s + settings.batch_size]
            optimiser.zero_grad(set_to_none=True)
            loss = loss_fn(model(x_train[idx]), y_train[idx])
            loss.backward()
            optimiser.step()
            total += loss.detach().double() * len(idx)
        history["train_loss"].append(float(total) / len(order))
        val = _mean_loss(model, x_valid, y_valid)
        history["validation_loss"].append(val)
        if val < best_loss - settings.min_improvement:
            best_loss, best_epoch = val, epoch
            best_state = copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= settings.patience_epochs:
            break
    model.load_state_dict(best_state)
    model.eval()
    clf = TrainedClassifier(labels, history, best_epoch, model, mean, std)
    clf.validation = {label: clf.log_proba(v) for label, v in zip(labels, valid)}
    return clf


def _mlp(d_in: int, hidden: tuple[int, ...], k: int, gen: torch.Generator) -> nn.Sequential:
    """LeakyReLU MLP, initialised from ``gen`` (PyTorch's default Linear init, seeded)."""
    layers: list[nn.Module] = []
    sizes = [d_in, *hidden]
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), nn.LeakyReLU()]
    layers.append(nn.Linear(sizes[-1], k))
    for layer in layers:
        if isinstance(layer, nn.Linear):
            # What nn.Linear.reset_parameters does, but from our generator.
            nn.init.kaiming_uniform_(layer.weight, a=np.sqrt(5), generator=gen)
            bound = 1.0 / np.sqrt(layer.in_features)
            nn.init.uniform_(layer.bias, -bound, bound, generator=gen)
    return nn.Sequential(*layers)


def _mean_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    total = 0.0
    with torch.inference_mode():
        for s in range(0, len(x), _EVAL_ROWS):
            logits = model(x[s : s + _EVAL_ROWS])
            target = y[s : s + _EVAL_ROWS]
            total += float(nn.functional.cross_entropy(logits, target, reduction="sum"))
    return total / len(x)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _index(clf: TrainedClassifier, label: str) -> int:
    try:
        return clf.labels.index(label)
    except ValueError:
        raise InputError(f"unknown upsampler label {label!r}; known: {clf.labels}") from None


def _rows(a: np.ndarray, what: str, d: int | None) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or (d is not None and a.shape[1] != d):
        want = f"(n, {d})" if d is not None else "(n, d)"
        raise InputError(f"{what}: expected a {want} array, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise InputError(f"{what}: {int((~np.isfinite(a)).sum())} non-finite values")
    return a
