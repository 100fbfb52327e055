from __future__ import annotations

import numpy as np
import pytest

from medml.balance import balance_training_rows, inverse_frequency_weights

Y = np.array([0] * 60 + [1] * 30 + [2] * 10)


def test_inverse_frequency_weights_equalise_class_contributions() -> None:
    weights = inverse_frequency_weights(Y, 3)
    contributions = [weights[c] * (Y == c).sum() for c in range(3)]
    assert np.allclose(contributions, contributions[0])
    assert np.isclose(np.mean([weights[c] for c in Y]), 1.0)  # mean weight per sample is 1


def test_binary_weights_match_one_minus_frequency_up_to_scale() -> None:
    y = np.array([0] * 75 + [1] * 25)
    weights = inverse_frequency_weights(y, 2)
    expected = {0: 1 - 0.75, 1: 1 - 0.25}  # the X-ray write-up's w_c = 1 - n_c / N
    assert np.isclose(weights[1] / weights[0], expected[1] / expected[0])


def test_missing_class_is_refused() -> None:
    with pytest.raises(ValueError, match=r"classes \[3\] have no training samples"):
        inverse_frequency_weights(Y, 4)


@pytest.mark.parametrize(
    ("strategy", "expected_counts"),
    [
        ("none", [60, 30, 10]),
        ("class_weight", [60, 30, 10]),
        ("undersample", [10, 10, 10]),
        ("oversample", [60, 60, 60]),
    ],
)
def test_strategies_resample_positions(strategy: str, expected_counts: list[int]) -> None:
    balanced = balance_training_rows(Y, 3, strategy, seed=0)
    assert np.bincount(Y[balanced.indices], minlength=3).tolist() == expected_counts
    assert (balanced.class_weight is not None) == (strategy == "class_weight")


def test_unknown_strategy() -> None:
    with pytest.raises(ValueError, match="unknown balance strategy 'smote2'"):
        balance_training_rows(Y, 3, "smote2", seed=0)
