"""Balancing strategies: class counts after fit_resample; only a fold's training part."""

from __future__ import annotations

import numpy as np
import pytest

from medml.balance import (
    AugmentOversampler,
    BalancePlan,
    BalanceStrategy,
    Capabilities,
    PixelSMOTE,
    StreamingAugmentOversampler,
    StreamingSMOTE,
    inverse_frequency_weights,
    plan_balance,
    strategy_capabilities,
)
from medml.config import AugmentConfig, TrainConfig
from medml.errors import ConfigError

Y = np.array([0] * 60 + [1] * 30 + [2] * 10)


def _images(y: np.ndarray, size: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=(len(y), size, size, 1))
    return np.clip(base + y[:, None, None, None] * 40, 0, 255).astype(np.uint8)


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
    [("none", [60, 30, 10]), ("class_weight", [60, 30, 10]), ("undersample", [10, 10, 10]),
     ("oversample", [60, 60, 60]), ("balanced_batches", [60, 30, 10])],
)  # fmt: skip
def test_index_strategies(strategy: str, expected_counts: list[int]) -> None:
    plan = plan_balance(Y, 3, TrainConfig(balance=strategy), seed=0)
    assert np.bincount(Y[plan.indices], minlength=3).tolist() == expected_counts
    assert (plan.class_weight is not None) == (strategy == "class_weight")
    assert plan.balanced_batches == (strategy == "balanced_batches")
    assert plan.array_sampler is None


def test_augment_oversample_tops_up_to_majority_and_keeps_originals() -> None:
    x = _images(Y)
    sampler = AugmentOversampler(augment=AugmentConfig(), random_state=0)
    x_res, y_res = sampler.fit_resample(x, Y)
    assert np.bincount(y_res).tolist() == [60, 60, 60]
    assert sampler.sampling_strategy_ == {0: 0, 1: 30, 2: 50}
    np.testing.assert_array_equal(x_res[: len(x)], x)  # originals untouched, first
    assert x_res.dtype == np.uint8 and x_res.shape[1:] == x.shape[1:]
    copies = x_res[len(x) :]
    assert not any((copy == x).all(axis=(1, 2, 3)).any() for copy in copies[:10])  # augmented


def test_smote_balances_and_synthesises_new_images() -> None:
    x = _images(Y)
    x_res, y_res = PixelSMOTE(random_state=0).fit_resample(x, Y)
    assert np.bincount(y_res).tolist() == [60, 60, 60]
    assert x_res.shape == (180, 8, 8, 1) and x_res.dtype == np.uint8


def test_smote_refuses_over_budget_naming_it() -> None:
    x = np.zeros((100, 64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match=r"over the budget of 1 MiB; use StreamingSMOTE"):
        PixelSMOTE(memory_budget_mb=1).fit_resample(x, Y)


def test_samplers_keep_constructor_args_as_given() -> None:
    sampler = PixelSMOTE(k_neighbors=3, memory_budget_mb=7, random_state=5)
    assert (sampler.k_neighbors, sampler.memory_budget_mb, sampler.random_state) == (3, 7, 5)
    with pytest.raises(TypeError):
        PixelSMOTE(3)  # type: ignore[misc]  # keyword-only, as in imbalanced-learn


def test_plan_uses_the_streaming_and_array_samplers() -> None:
    smote = plan_balance(Y, 3, TrainConfig(balance="smote"), seed=0)
    assert isinstance(smote.rows_sampler, StreamingSMOTE) and smote.array_sampler is None
    augment = plan_balance(Y, 3, TrainConfig(balance="augment_oversample"), seed=0)
    assert isinstance(augment.rows_sampler, StreamingAugmentOversampler)
    assert augment.array_sampler is None


def test_streaming_augment_oversample_plans_what_the_in_memory_one_makes() -> None:
    """Same copies (sources and labels) as AugmentOversampler; no image read when fitting;
    in the input pipeline only the copies are augmented, originals come out unchanged."""
    from medml.augment import RandAugment
    from medml.train import make_dataset

    x = _images(Y)
    rows = _CountingRows(x)
    streaming = StreamingAugmentOversampler(augment=AugmentConfig(), random_state=0).fit(rows, Y)
    _, y_memory = AugmentOversampler(augment=AugmentConfig(), random_state=0).fit_resample(x, Y)
    assert rows.largest_read == 0  # planned on the labels alone
    np.testing.assert_array_equal(streaming.y_, y_memory)
    assert streaming.sampling_strategy_ == {0: 0, 1: 30, 2: 50}
    copied = streaming.rows(rows)
    assert len(copied) == 180 and copied.copies_from == len(x)
    sources = streaming.sources_
    assert all(Y[s] == label for s, label in zip(sources, streaming.y_[len(x) :], strict=True))
    np.testing.assert_array_equal(copied.gather(np.array([0, 99, 100])), x[[0, 99, sources[0]]])

    data = make_dataset(copied, streaming.y_, batch_size=32, training=True, seed=0,
                        augment_copies=RandAugment(AugmentConfig(), seed=1),
                        copies_from=copied.copies_from)  # fmt: skip
    assert rows.largest_read <= 32  # one batch at a time
    seen = {tuple(img.ravel()) for xb, _ in data for img in np.asarray(xb)}
    originals = {tuple(img.ravel()) for img in x}
    assert originals <= seen  # every original, untouched
    assert len(seen - originals) > 0.9 * 80  # the 80 copies come out augmented


@pytest.mark.parametrize(
    ("strategy", "declared"),
    [("none", set()), ("class_weight", {"weights_classes"}), ("undersample", {"resamples_rows"}),
     ("oversample", {"resamples_rows"}), ("smote", {"adds_rows_on_read"}),
     ("augment_oversample", {"adds_rows_on_read", "augments_copies_per_batch"}),
     ("balanced_batches", {"balanced_batches"})],
)  # fmt: skip
def test_strategies_declare_what_they_need_and_plans_carry_it(
    strategy: str, declared: set[str]
) -> None:
    capabilities = strategy_capabilities(strategy)
    flags = {name for name, on in vars(capabilities).items() if on}
    assert flags == declared
    assert plan_balance(Y, 3, TrainConfig(balance=strategy), seed=0).capabilities == capabilities


def test_a_plan_that_contradicts_its_declaration_is_refused() -> None:
    def weighted(y: np.ndarray, n_classes: int, cfg: TrainConfig, seed: int) -> BalancePlan:
        return BalancePlan(np.arange(len(y)), class_weight=inverse_frequency_weights(y, 3))

    def resampled(y: np.ndarray, n_classes: int, cfg: TrainConfig, seed: int) -> BalancePlan:
        return BalancePlan(np.arange(len(y))[::-1])

    silent = BalanceStrategy("weighted", weighted, Capabilities())
    with pytest.raises(ValueError, match=r"'weighted' declares weights_classes=False but its "
                                         r"plan says True"):  # fmt: skip
        silent(Y, 3, TrainConfig(), 0)
    with pytest.raises(ValueError, match=r"resamples rows without declaring resamples_rows"):
        BalanceStrategy("resampled", resampled, Capabilities())(Y, 3, TrainConfig(), 0)
    plan = BalanceStrategy("resampled", resampled, Capabilities(resamples_rows=True))(
        Y, 3, TrainConfig(), 0
    )
    assert plan.capabilities.resamples_rows


def test_capabilities_the_trainer_cannot_honour_together_are_refused() -> None:
    with pytest.raises(ValueError, match="augments_copies_per_batch needs adds_rows_on_read"):
        Capabilities(augments_copies_per_batch=True)
    with pytest.raises(ValueError, match="not both"):
        Capabilities(adds_rows_on_read=True, resamples_loaded_images=True)


def test_copies_are_augmented_only_where_the_caller_says_they_start() -> None:
    from medml.augment import RandAugment
    from medml.train import make_dataset

    with pytest.raises(ValueError, match="augment_copies needs copies_from"):
        make_dataset(_images(Y), Y, batch_size=8, training=True,
                     augment_copies=RandAugment(AugmentConfig(), seed=1))  # fmt: skip


def test_unknown_strategy_suggests_the_closest_name() -> None:
    from medml.config import load_recipe

    with pytest.raises(ConfigError, match=r"unknown balancing strategy 'smote2'; did you mean "
                                          r"'smote'\? available: none, class_weight"):  # fmt: skip
        load_recipe("kidney-ct", overrides=["train.balance=smote2"])


class _CountingRows:
    """Images by position, recording the largest read (StreamingSMOTE must read in chunks)."""

    def __init__(self, images: np.ndarray) -> None:
        self.images, self.image_shape, self.largest_read = images, images.shape[1:], 0

    def __len__(self) -> int:
        return len(self.images)

    def gather(self, positions: np.ndarray) -> np.ndarray:
        self.largest_read = max(self.largest_read, len(positions))
        return self.images[positions]


def _blobs(y: np.ndarray, side: int = 16) -> np.ndarray:
    """Class-shaped images: a bright square whose place and size depend on the class."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 60, size=(len(y), side, side, 1)).astype(np.uint8)
    for i, label in enumerate(y):
        top = 2 + 3 * int(label) + int(rng.integers(0, 3))
        images[i, top : top + 4 + int(label), 3:11] = 200 + int(rng.integers(0, 40))
    return images


def test_streaming_smote_plans_like_imbalanced_learn_and_reads_in_chunks() -> None:
    y = np.repeat([0, 1, 2], [60, 14, 25])
    images = _blobs(y)
    rows = _CountingRows(images)
    sampler = StreamingSMOTE(random_state=0, chunk=64).fit(rows, y)
    assert rows.largest_read <= 64
    assert np.bincount(sampler.y_).tolist() == [60, 60, 60]
    assert sampler.sampling_strategy_ == {1: 46, 2: 35}
    synthetic = sampler.rows(rows)
    assert len(synthetic) == len(sampler.y_) and synthetic.image_shape == images.shape[1:]
    made = synthetic.gather(np.arange(len(y), len(synthetic)))
    base, other, gap = images[sampler.base_], images[sampler.neighbour_], sampler.gap_
    expected = np.rint(base + gap[:, None, None, None] * (other.astype(np.float32) - base))
    np.testing.assert_array_equal(made, np.clip(expected, 0, 255).astype(np.uint8))
    same_class = y[sampler.base_] == y[sampler.neighbour_]
    assert same_class.all() and (sampler.base_ != sampler.neighbour_).all()
    np.testing.assert_array_equal(synthetic.gather(np.arange(len(y))), images)


def test_streaming_smote_matches_imbalanced_learn_in_distribution() -> None:
    """Same data, both SMOTEs: streamed synthetic images differ from imbalanced-learn's no more
    than two imbalanced-learn runs with different seeds differ from each other (mean image,
    distance to the nearest real image of the class)."""
    from scipy.stats import ks_2samp

    y = np.repeat([0, 1, 2], [120, 30, 45])
    images = _blobs(y)

    def new_images(resampled: np.ndarray, labels: np.ndarray, cls: int) -> np.ndarray:
        return resampled[len(y) :][labels[len(y) :] == cls].reshape(-1, 256).astype(np.float32)

    runs = [PixelSMOTE(random_state=seed).fit_resample(images, y) for seed in (0, 1)]
    sampler = StreamingSMOTE(random_state=2).fit(_CountingRows(images), y)
    streamed = sampler.rows(_CountingRows(images)).gather(np.arange(len(sampler.y_)))
    for cls in (1, 2):
        ref, other = (new_images(x, labels, cls) for x, labels in runs)
        ours = new_images(streamed, sampler.y_, cls)
        assert len(ours) == len(ref)
        seed_noise = np.abs(ref.mean(axis=0) - other.mean(axis=0)).mean()
        assert np.abs(ref.mean(axis=0) - ours.mean(axis=0)).mean() < 1.5 * seed_noise + 0.5
        originals = images[y == cls].reshape(-1, 256).astype(np.float32)

        def nearest(points: np.ndarray, originals: np.ndarray = originals) -> np.ndarray:
            gaps = ((points[:, None, :] - originals[None]) ** 2).sum(-1)
            return np.sqrt(gaps.min(axis=1))

        assert ks_2samp(nearest(ref), nearest(ours)).pvalue > 0.01
