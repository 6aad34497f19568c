"""The multi-model classifier test on distributions whose answer is known."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.special import logsumexp

from galmock.errors import InputError
from galmock.validate.classifier import (
    ClassifierSettings,
    TrainedClassifier,
    lp_difference,
    lp_scores,
    pairwise_auc,
    roc_auc,
    train_classifier,
)

# One torch thread: with tiny networks, intra-op threads on a busy 2-core machine are ~20x slower.
SMALL = ClassifierSettings(
    hidden=(32, 32), batch_size=256, patience_epochs=8, max_epochs=300, seed=0, threads=1
)


def _auc_null_se(n_pos: int, n_neg: int) -> float:
    """Standard error of the Mann-Whitney AUC when both classes share one distribution."""
    return float(np.sqrt((n_pos + n_neg + 1) / (12.0 * n_pos * n_neg)))


@pytest.fixture(scope="module")
def identical() -> tuple[TrainedClassifier, np.ndarray]:
    rng = np.random.default_rng(10)
    draws = {"a": rng.normal(size=(4000, 3)), "b": rng.normal(size=(4000, 3))}
    return train_classifier(draws, SMALL), rng.normal(size=(1000, 3))


def test_roc_auc_is_the_pair_count_with_half_ties() -> None:
    rng = np.random.default_rng(0)
    pos = rng.integers(0, 6, size=37).astype(float)  # many ties
    neg = rng.integers(0, 5, size=23).astype(float)
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p, q in itertools.product(pos, neg))
    assert roc_auc(pos, neg) == pytest.approx(wins / (len(pos) * len(neg)), abs=1e-12)
    assert roc_auc(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 0.0
    assert roc_auc(np.array([5.0]), np.array([5.0])) == 0.5
    with pytest.raises(InputError, match="both classes"):
        roc_auc(np.array([]), np.array([1.0]))


def test_identical_distributions_are_indistinguishable(identical) -> None:
    clf, test = identical
    n_valid = len(clf.validation["a"])
    assert n_valid == len(clf.validation["b"]) == 2000
    auc = pairwise_auc(clf)[("a", "b")]
    assert abs(auc - 0.5) < 4 * _auc_null_se(n_valid, n_valid)
    # The paired SE covers the test particles' noise only, not the trained classifier's own
    # small bias (here ~0.01 nats, i.e. several test SEs: measured over 8 seeds |z| up to 6.6).
    # So check the SE against an independent sample of the same function's mean, the pooled
    # validation draws (measured z within +-1.6 over 8 seeds), and the bias in absolute terms.
    diff, se = lp_difference(clf, test, "a", "b")
    pooled = np.concatenate([clf.validation["a"], clf.validation["b"]])
    f = pooled[:, 0] - pooled[:, 1]
    assert se > 0 and abs(diff - f.mean()) < 4 * np.hypot(se, f.std(ddof=1) / np.sqrt(len(f)))
    assert abs(diff) < 0.05
    # Equal priors and no information: both LPs sit near log(1/2).
    for score in lp_scores(clf, test):
        assert score.mean == pytest.approx(np.log(0.5), abs=0.05)


def test_early_stopping_follows_the_patience_rule(identical) -> None:
    clf, _ = identical
    epochs = len(clf.history["validation_loss"])
    assert len(clf.history["train_loss"]) == epochs
    assert epochs == clf.best_epoch + SMALL.patience_epochs + 1 < SMALL.max_epochs
    val = clf.history["validation_loss"]
    assert val[clf.best_epoch] == min(val)


def test_log_proba_rows_are_normalised(identical) -> None:
    clf, test = identical
    lp = clf.log_proba(test)
    assert lp.shape == (len(test), 2) and lp.dtype == np.float64
    np.testing.assert_allclose(logsumexp(lp, axis=1), 0.0, atol=1e-12)
    with pytest.raises(InputError, match="shape"):
        clf.log_proba(test[:, :2])


def test_well_separated_classes_and_trivial_early_stop() -> None:
    rng = np.random.default_rng(1)
    draws = {"left": rng.normal(0, 1, (3000, 2)), "right": rng.normal(4, 1, (3000, 2))}
    settings = ClassifierSettings(
        hidden=(32, 32), batch_size=256, patience_epochs=5, max_epochs=400, min_improvement=1e-3,
        threads=1,
    )
    clf = train_classifier(draws, settings)
    assert pairwise_auc(clf)[("left", "right")] > 0.95
    assert len(clf.history["validation_loss"]) < settings.max_epochs


def test_the_class_matching_the_test_distribution_scores_highest() -> None:
    rng = np.random.default_rng(2)
    n = 6000
    draws = {
        "broad": rng.normal(0, 1.5, (n, 3)),
        "match": rng.normal(0, 1, (n, 3)),
        "shifted": rng.normal(0, 1, (n, 3)) + np.array([0.7, 0.0, 0.0]),
    }
    clf = train_classifier(draws, SMALL)
    test = rng.normal(0, 1, (3000, 3))
    scores = {s.label: s for s in lp_scores(clf, test)}
    assert max(scores, key=lambda k: scores[k].mean) == "match"
    for other in ("broad", "shifted"):
        diff, se = lp_difference(clf, test, "match", other)
        assert diff > 5 * se, (other, diff, se)
        # Paired SE is no larger than the combined one here (positively correlated columns
        # would make it smaller; it must at least not exceed the sum).
        assert se <= scores["match"].stderr + scores[other].stderr
    pairs = {("broad", "match"), ("broad", "shifted"), ("match", "shifted")}
    assert set(pairwise_auc(clf)) == pairs


def test_same_seed_gives_the_same_classifier() -> None:
    rng = np.random.default_rng(3)
    draws = {"a": rng.normal(0, 1, (1500, 2)), "b": rng.normal(0.5, 1, (1500, 2))}
    settings = ClassifierSettings(
        hidden=(16,), batch_size=128, patience_epochs=3, max_epochs=30, threads=1
    )
    test = rng.normal(size=(200, 2))
    one, two = train_classifier(draws, settings), train_classifier(draws, settings)
    np.testing.assert_array_equal(one.log_proba(test), two.log_proba(test))
    assert one.history == two.history
    other = train_classifier(draws, ClassifierSettings(**{**settings.__dict__, "seed": 1}))
    assert not np.array_equal(one.log_proba(test), other.log_proba(test))


def test_unequal_classes_are_subsampled_to_equal_priors() -> None:
    rng = np.random.default_rng(4)
    draws = {"big": rng.normal(size=(900, 2)), "small": rng.normal(size=(300, 2))}
    settings = ClassifierSettings(
        hidden=(8,), batch_size=128, patience_epochs=2, max_epochs=5, validation_fraction=0.4,
        threads=1,
    )
    clf = train_classifier(draws, settings)
    assert len(clf.validation["big"]) == len(clf.validation["small"]) == 120


def test_bad_classifier_input() -> None:
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(50, 2)), rng.normal(size=(50, 3))
    with pytest.raises(InputError, match="at least 2"):
        train_classifier({"a": a}, SMALL)
    with pytest.raises(InputError, match="column counts"):
        train_classifier({"a": a, "b": b}, SMALL)
    bad = a.copy()
    bad[3, 1] = np.nan
    with pytest.raises(InputError, match=r"samples\['b'\].*non-finite"):
        train_classifier({"a": a, "b": bad}, SMALL)
    with pytest.raises(InputError, match="validation_fraction"):
        train_classifier({"a": a, "b": a}, ClassifierSettings(validation_fraction=1.0))
