"""Class balancing, applied only to the training part of a fold.

Strategies (``train.balance`` in the recipe; :data:`medml.extensions.BALANCERS` is the list,
filled by the ``@register_strategy`` planners below, each with the :class:`Capabilities` its
plans need from the trainer):

- ``none``: train on the data as it is;
- ``class_weight``: scale each class's loss by its inverse frequency;
- ``undersample`` / ``oversample``: imbalanced-learn's RandomUnderSampler / RandomOverSampler.
  They resample *row indices*, so images are gathered once, after resampling;
- ``augment_oversample``: top minority classes up to the majority count with randomly
  augmented copies, each augmented when its batch is read
  (:class:`StreamingAugmentOversampler`, O(batch) memory; :class:`AugmentOversampler` makes
  them all in memory, the reference);
- ``smote``: SMOTE, as seed 000 does, streamed from the shards (:class:`StreamingSMOTE`):
  planned on small projections, each synthetic image made when its batch is read (O(batch)
  memory); :class:`PixelSMOTE` is imbalanced-learn's in-memory SMOTE, the reference;
- ``balanced_batches``: no resampling here; the tf.data pipeline draws every batch with equal
  class probabilities (O(batch) memory, see :func:`medml.train.make_dataset`).

Samplers follow imbalanced-learn's contract: keyword-only constructor arguments stored as
given, ``fit_resample(X, y)`` (``fit(rows, y)`` for the streaming one), fitted attributes ending
in ``_``. :func:`plan_balance` is the
trainer's only entry point and it receives only the fold's training labels, so validation
folds and the holdout cannot be resampled: there is no code path that balances before the
split.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from medml.config import AugmentConfig, TrainConfig
from medml.errors import MedmlError
from medml.extensions import BALANCERS


class BalanceError(MedmlError, ValueError):
    """A fold's training part cannot be balanced as asked; the message says why and what to do."""


def inverse_frequency_weights(y: np.ndarray, n_classes: int) -> dict[int, float]:
    """Class weights ``N / (k * n_c)``: every class contributes equally to the loss.

    For two classes this is proportional to the X-ray write-up's ``w_c = 1 - n_c / N``
    (``w_pos = n_neg / N``); the k-class form keeps the mean weight per sample at 1, so the
    learning rate means the same with and without weighting.

    Raises:
        BalanceError: a class in ``range(n_classes)`` has no samples.
    """
    from sklearn.utils.class_weight import compute_class_weight

    y = np.asarray(y, dtype=np.int64)
    counts = np.bincount(y, minlength=n_classes)
    if (counts == 0).any():
        missing = np.flatnonzero(counts == 0).tolist()
        raise BalanceError(f"classes {missing} have no training samples; cannot weight them")
    weights = compute_class_weight("balanced", classes=np.arange(n_classes), y=y)
    return {c: float(weight) for c, weight in enumerate(weights)}


class AugmentOversampler:
    """Top every minority class up to the majority count with augmented copies.

    Copies are made from the class's own images — each used as evenly as possible, or drawn
    uniformly (``augment.sources``) — and passed through :class:`medml.augment.RandAugment`;
    the original images are kept unchanged.

    Args:
        augment: the augmentations to apply to the copies.
        batch_size: how many copies to augment at once.
        random_state: seed for choosing and augmenting copies.
    """

    def __init__(
        self, *, augment: AugmentConfig | None = None, batch_size: int = 256,
        random_state: int | None = None,
    ) -> None:  # fmt: skip
        self.augment = augment
        self.batch_size = batch_size
        self.random_state = random_state

    def fit_resample(self, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return ``X`` and ``y`` with augmented minority copies appended.

        Raises:
            ValueError: ``X`` is not a batch of images or does not match ``y``.
        """
        from medml.augment import RandAugment

        X, y = _check_images(X, y)
        seed = 0 if self.random_state is None else int(self.random_state)
        config = self.augment or AugmentConfig()
        augmenter = RandAugment(config, seed=seed)
        self.sampling_strategy_, sources, labels = _plan_copies(y, config, seed)
        new_x, new_y = [X], [y]
        for start in range(0, len(sources), self.batch_size):
            chosen = sources[start : start + self.batch_size]
            augmented = np.asarray(augmenter(X[chosen]))
            new_x.append(np.rint(augmented).astype(X.dtype))
            new_y.append(labels[start : start + self.batch_size].astype(y.dtype))
        return np.concatenate(new_x), np.concatenate(new_y)


class StreamingAugmentOversampler:
    """Augmentation oversampling in O(batch) memory: copies planned on the labels, each
    augmented when its batch is read.

    :meth:`fit` chooses the original every copy is made from exactly as
    :class:`AugmentOversampler` does (same seed, same sources); :meth:`rows` returns the
    originals followed by the copies' source images (:class:`CopiedRows`), and the input
    pipeline passes only the copies through ``augment`` as each batch is read
    (:func:`medml.train.make_dataset`). Nothing is held but one source index per copy; unlike
    the in-memory sampler, a copy is augmented afresh every epoch.

    Args:
        augment: the augmentations the copies get.
        random_state: seed for choosing the copies' sources.
    """

    def __init__(
        self, *, augment: AugmentConfig | None = None, random_state: int | None = None
    ) -> None:
        self.augment = augment
        self.random_state = random_state

    def fit(self, rows: Rows, y: np.ndarray) -> StreamingAugmentOversampler:
        """Plan the copies (no image is read).

        Raises:
            BalanceError: ``y`` does not match ``rows``.
        """
        y = np.asarray(y, dtype=np.int64)
        if len(y) != len(rows):
            raise BalanceError(f"{len(rows)} images but {len(y)} labels")
        seed = 0 if self.random_state is None else int(self.random_state)
        self.sampling_strategy_, self.sources_, labels = _plan_copies(
            y, self.augment or AugmentConfig(), seed
        )
        self.y_ = np.concatenate([y, labels])
        return self

    def rows(self, originals: Rows) -> CopiedRows:
        """The originals followed by the planned copies (their sources; augmented on read)."""
        return CopiedRows(originals, self.sources_)


def _plan_copies(
    y: np.ndarray, config: AugmentConfig, seed: int
) -> tuple[dict[int, int], np.ndarray, np.ndarray]:
    """Copies per class (up to the majority), each copy's source and its class."""
    from medml.augment import copy_sources

    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    target = counts.max()
    strategy = {int(c): int(target - n) for c, n in zip(classes, counts, strict=True)}
    sources, labels = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for cls, missing in strategy.items():
        if missing:
            sources.append(copy_sources(np.flatnonzero(y == cls), missing, rng,
                                        replace=config.sources == "with_replacement"))  # fmt: skip
            labels.append(np.full(missing, cls, dtype=np.int64))
    return strategy, np.concatenate(sources).astype(np.int64), np.concatenate(labels)


class CopiedRows:
    """Originals, then copies of some of them: position ``copies_from + i`` reads the original
    ``sources[i]`` (the input pipeline augments it)."""

    def __init__(self, originals: Rows, sources: np.ndarray) -> None:
        self.originals = originals
        self.image_shape = originals.image_shape
        self.copies_from = len(originals)
        self._sources = np.asarray(sources, dtype=np.int64)

    def __len__(self) -> int:
        return self.copies_from + len(self._sources)

    def gather(self, positions: np.ndarray) -> np.ndarray:
        """The uint8 images at ``positions`` (a copy: its source, not yet augmented)."""
        sources = np.array(positions, dtype=np.int64)  # a copy: rewritten below
        copied = sources >= self.copies_from
        sources[copied] = self._sources[sources[copied] - self.copies_from]
        return self.originals.gather(sources)


class PixelSMOTE:
    """imbalanced-learn's SMOTE on flattened pixels (seed 000's method), in memory.

    SMOTE interpolates between a minority image and one of its ``k_neighbors`` nearest
    neighbours in pixel space. Its working set is the full float64 feature matrix of the
    resampled data, so it is refused — with the numbers — when that exceeds the budget. The
    pipeline's ``smote`` strategy runs :class:`StreamingSMOTE` instead; this class is the
    in-memory reference it is checked against.

    Args:
        k_neighbors: neighbours used for interpolation (lowered for tiny classes).
        memory_budget_mb: refuse above this estimated working set.
        random_state: seed.
    """

    def __init__(
        self, *, k_neighbors: int = 5, memory_budget_mb: int = 1024, random_state: int | None = None
    ) -> None:
        self.k_neighbors = k_neighbors
        self.memory_budget_mb = memory_budget_mb
        self.random_state = random_state

    def estimate_mb(self, y: np.ndarray, n_features: int) -> float:
        """Estimated working set of SMOTE on these labels, in MiB."""
        counts = np.bincount(np.asarray(y, dtype=np.int64))
        n_out = int(counts.max()) * int((counts > 0).sum())
        return 2 * n_out * n_features * 8 / 2**20  # float64 input copy + resampled output

    def fit_resample(self, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return ``X`` and ``y`` with synthetic minority images appended.

        Raises:
            BalanceError: the estimated working set exceeds ``memory_budget_mb``, or a class has
                a single image (SMOTE needs a neighbour).
        """
        from imblearn.over_sampling import SMOTE

        X, y = _check_images(X, y)
        n_features = int(np.prod(X.shape[1:]))
        needed = self.estimate_mb(y, n_features)
        if needed > self.memory_budget_mb:
            raise BalanceError(
                f"SMOTE on {n_features} pixel features x {len(y)} images needs about "
                f"{needed:.0f} MiB, over the budget of {self.memory_budget_mb} MiB; use "
                "StreamingSMOTE (what train.balance: smote runs), which needs O(batch) memory"
            )
        smallest = int(np.bincount(y)[np.bincount(y) > 0].min())
        if smallest < 2:
            raise BalanceError("SMOTE needs at least 2 images in every class of the training fold")
        smote = SMOTE(
            k_neighbors=min(self.k_neighbors, smallest - 1), random_state=self.random_state
        )
        flat, y_res = smote.fit_resample(X.reshape(len(X), -1).astype(np.float32), y)
        self.sampling_strategy_ = dict(smote.sampling_strategy_)
        self.n_features_in_ = n_features
        images = np.clip(np.rint(flat), 0, 255).astype(X.dtype).reshape((-1, *X.shape[1:]))
        return images, y_res.astype(y.dtype)


class Rows(Protocol):
    """Random access to images by position (:class:`~medml.preprocess.ShardRows` and friends)."""

    image_shape: tuple[int, int, int]

    def __len__(self) -> int: ...

    def gather(self, positions: np.ndarray) -> np.ndarray: ...


class StreamingSMOTE:
    """SMOTE in O(batch) memory: plan on the shards, interpolate each batch as it is read.

    imbalanced-learn's SMOTE holds every training image as float64 features; at 20,000 images of
    224×224×3 that is 24 GB. Here nothing is held but small per-image vectors:

    1. **fit** reads the rows in chunks, shrinks each image to at most 32×32 (area average),
       projects it to ``components`` dimensions (incremental PCA, fitted chunk by chunk) and
       finds each minority image's ``k_neighbors`` nearest same-class neighbours there;
    2. the **plan** is SMOTE's own: each synthetic image takes a base image drawn uniformly from
       its class, one of the base's k neighbours drawn uniformly, and a gap drawn from [0, 1);
       every class is topped up to the largest;
    3. :meth:`rows` returns the originals followed by the synthetic images; a synthetic image is
       ``base + gap · (neighbour − base)`` in full resolution, computed when its batch is read.

    Args:
        k_neighbors: neighbours to interpolate towards (lowered for tiny classes).
        components: dimensions of the projection the neighbours are found in.
        chunk: images read at once while fitting.
        random_state: seed of the plan.
    """

    def __init__(
        self, *, k_neighbors: int = 5, components: int = 64, chunk: int = 1024,
        random_state: int | None = None,
    ) -> None:  # fmt: skip
        self.k_neighbors = k_neighbors
        self.components = components
        self.chunk = chunk
        self.random_state = random_state

    def fit(self, rows: Rows, y: np.ndarray) -> StreamingSMOTE:
        """Project the images chunk by chunk, find neighbours per class and plan the synthetics.

        Raises:
            BalanceError: ``y`` does not match ``rows``, or a minority class has one image.
        """
        y = np.asarray(y, dtype=np.int64)
        if len(y) != len(rows):
            raise BalanceError(f"{len(rows)} images but {len(y)} labels")
        counts = np.bincount(y)
        present = np.flatnonzero(counts)
        missing = {int(c): int(counts.max() - counts[c]) for c in present}
        if any(counts[c] < 2 for c, m in missing.items() if m):
            raise BalanceError("SMOTE needs at least 2 images in every class of the training fold")
        projected = self._project(rows)
        rng = np.random.default_rng(self.random_state)
        base, neighbour, gap, labels = [], [], [], []
        for cls, m in missing.items():
            if m == 0:
                continue
            members = np.flatnonzero(y == cls)
            k = min(self.k_neighbors, len(members) - 1)
            near = _class_neighbours(projected[members], k)
            picks = rng.integers(0, len(members) * k, size=m)  # as imbalanced-learn draws
            base.append(members[picks // k])
            neighbour.append(members[near[picks // k, picks % k]])
            gap.append(rng.random(m).astype(np.float32))
            labels.append(np.full(m, cls, dtype=np.int64))
        cat = np.concatenate
        self.base_ = cat(base) if base else np.zeros(0, np.int64)
        self.neighbour_ = cat(neighbour) if neighbour else np.zeros(0, np.int64)
        self.gap_ = cat(gap) if gap else np.zeros(0, np.float32)
        self.y_ = cat([y, *labels])
        self.sampling_strategy_ = {c: m for c, m in missing.items() if m}
        return self

    def rows(self, originals: Rows) -> SyntheticRows:
        """The originals followed by the planned synthetic images (interpolated on read)."""
        return SyntheticRows(originals, self.base_, self.neighbour_, self.gap_)

    def _project(self, rows: Rows) -> np.ndarray:
        from sklearn.decomposition import IncrementalPCA

        n = len(rows)
        dims = min(self.components, n, int(np.prod(_small_shape(rows.image_shape))))
        chunk = max(self.chunk, dims)
        pca = IncrementalPCA(n_components=dims)
        starts = range(0, n, chunk)
        for start in starts:
            batch = _small(rows.gather(np.arange(start, min(start + chunk, n))))
            if len(batch) >= dims:  # a short last chunk is only transformed
                pca.partial_fit(batch)
        return np.concatenate(
            [pca.transform(_small(rows.gather(np.arange(s, min(s + chunk, n))))) for s in starts]
        ).astype(np.float32)


class SyntheticRows:
    """Originals, then synthetic images ``base + gap · (neighbour − base)`` made on read."""

    def __init__(
        self, originals: Rows, base: np.ndarray, neighbour: np.ndarray, gap: np.ndarray
    ) -> None:
        self.originals = originals
        self.image_shape = originals.image_shape
        self._base, self._neighbour, self._gap = base, neighbour, gap

    def __len__(self) -> int:
        return len(self.originals) + len(self._base)

    def gather(self, positions: np.ndarray) -> np.ndarray:
        """The uint8 images at ``positions`` (synthetic ones interpolated now)."""
        positions = np.asarray(positions, dtype=np.int64)
        n = len(self.originals)
        out = np.empty((len(positions), *self.image_shape), dtype=np.uint8)
        real = positions < n
        if real.any():
            out[real] = self.originals.gather(positions[real])
        if (~real).any():
            which = positions[~real] - n
            a = self.originals.gather(self._base[which]).astype(np.float32)
            b = self.originals.gather(self._neighbour[which]).astype(np.float32)
            gap = self._gap[which].reshape(-1, 1, 1, 1)
            out[~real] = np.clip(np.rint(a + gap * (b - a)), 0, 255).astype(np.uint8)
        return out


def _small_shape(shape: tuple[int, int, int]) -> tuple[int, int, int]:
    side = min(32, shape[0])
    return side, side, shape[2]


def _small(images: np.ndarray) -> np.ndarray:
    """Images shrunk to at most 32×32 (area average), flattened to float32 rows."""
    import cv2

    side = min(32, images.shape[1])
    if side == images.shape[1]:
        return images.reshape(len(images), -1).astype(np.float32)
    small = [cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA) for image in images]
    return np.asarray(small, dtype=np.float32).reshape(len(images), -1)


def _class_neighbours(points: np.ndarray, k: int) -> np.ndarray:
    """Each point's ``k`` nearest other points of the same class (indices into ``points``)."""
    from sklearn.neighbors import NearestNeighbors

    search = NearestNeighbors(n_neighbors=k + 1).fit(points)
    return search.kneighbors(points, return_distance=False)[:, 1:]


@dataclass(frozen=True)
class Capabilities:
    """What a balancing strategy needs from the trainer, declared with the strategy.

    The trainer and the overview dispatch on these flags, never on a strategy's name or on the
    type of the rows its plan makes. :class:`BalanceStrategy` checks every plan against them and
    ``tests/unit/test_extension_contracts.py`` checks what they promise.

    Attributes:
        resamples_rows: ``BalancePlan.indices`` repeat or leave out some of the fold's training
            rows (otherwise they are every row, in order).
        weights_classes: ``BalancePlan.class_weight`` scales each class's loss.
        adds_rows_on_read: ``BalancePlan.rows_sampler`` is fitted on the fold's rows without
            loading them and appends rows made when their batch is read.
        augments_copies_per_batch: the appended rows are copies of the fold's own rows, and the
            input pipeline augments them (``train.augment``) each time their batch is read;
            only with ``adds_rows_on_read``.
        resamples_loaded_images: ``BalancePlan.array_sampler`` runs ``fit_resample`` on the
            fold's training images, loaded into memory.
        balanced_batches: the input pipeline draws every batch with equal class probabilities.

    Raises:
        ValueError: flags the trainer cannot honour together.
    """

    resamples_rows: bool = False
    weights_classes: bool = False
    adds_rows_on_read: bool = False
    augments_copies_per_batch: bool = False
    resamples_loaded_images: bool = False
    balanced_batches: bool = False

    def __post_init__(self) -> None:
        if self.augments_copies_per_batch and not self.adds_rows_on_read:
            raise ValueError("augments_copies_per_batch needs adds_rows_on_read (the copies)")
        if self.adds_rows_on_read and self.resamples_loaded_images:
            raise ValueError("a plan adds rows on read or resamples loaded images, not both")


@dataclass
class BalancePlan:
    """How to balance one fold's training rows.

    Attributes:
        indices: positions into the fold's training rows to load (repeats allowed).
        class_weight: loss weights, or ``None``.
        array_sampler: a sampler to run on the loaded images (``fit_resample``), or ``None``.
        rows_sampler: a sampler fitted on the fold's rows without loading them, whose
            ``rows(originals)`` returns the originals followed by images made on read
            (:class:`StreamingSMOTE`, :class:`StreamingAugmentOversampler`), or ``None``.
        capabilities: what the plan needs from the trainer: the strategy's declaration, set
            by :class:`BalanceStrategy` (a planner leaves the default).
    """

    indices: np.ndarray
    class_weight: dict[int, float] | None = None
    array_sampler: Any | None = None
    rows_sampler: StreamingSMOTE | StreamingAugmentOversampler | None = None
    capabilities: Capabilities = Capabilities()

    @property
    def balanced_batches(self) -> bool:
        """Draw class-balanced batches in the input pipeline (declared by the strategy)."""
        return self.capabilities.balanced_batches


Planner = Callable[[np.ndarray, int, TrainConfig, int], BalancePlan]


@dataclass(frozen=True)
class BalanceStrategy:
    """A registered balancing strategy: its planner and the capabilities it declares.

    Calling it plans a fold (``strategy(y, n_classes, cfg, seed)``) and returns the plan with
    the declared capabilities, after checking that the plan carries what they say.

    Attributes:
        name: the strategy's name (``train.balance``).
        planner: ``planner(y, n_classes, cfg, seed)`` returns a :class:`BalancePlan`.
        capabilities: what every plan of this strategy needs from the trainer.
    """

    name: str
    planner: Planner
    capabilities: Capabilities

    def __call__(self, y: np.ndarray, n_classes: int, cfg: TrainConfig, seed: int) -> BalancePlan:
        """Plan one fold's balancing.

        Raises:
            ValueError: the plan does not match the declared capabilities (a bug in the
                strategy).
        """
        plan = self.planner(y, n_classes, cfg, seed)
        declared = self.capabilities
        carried = {
            "weights_classes": plan.class_weight is not None,
            "adds_rows_on_read": plan.rows_sampler is not None,
            "resamples_loaded_images": plan.array_sampler is not None,
        }
        for flag, present in carried.items():
            if getattr(declared, flag) != present:
                raise ValueError(f"balancing strategy {self.name!r} declares {flag}="
                                 f"{not present} but its plan says {present}")  # fmt: skip
        if not declared.resamples_rows and not np.array_equal(plan.indices, _all_rows(y)):
            raise ValueError(f"balancing strategy {self.name!r} resamples rows without "
                             "declaring resamples_rows")  # fmt: skip
        return dataclasses.replace(plan, capabilities=declared)


def register_strategy(name: str, capabilities: Capabilities) -> Callable[[Planner], Planner]:
    """Decorator: register a planner in :data:`medml.extensions.BALANCERS` as ``name``, with
    the capabilities its plans need (every strategy declares them; ``Capabilities()`` is plain
    training on the rows as they are). Returns the planner unchanged."""

    def register(planner: Planner) -> Planner:
        BALANCERS.register(name)(BalanceStrategy(name, planner, capabilities))
        return planner

    return register


def strategy_capabilities(name: str) -> Capabilities:
    """What the balancing strategy ``name`` declares it needs (known before any fold).

    Raises:
        ConfigError: unknown strategy ("did you mean …").
    """
    return BALANCERS.get(name).capabilities


def plan_balance(
    y_train: np.ndarray, n_classes: int, cfg: TrainConfig, *, seed: int
) -> BalancePlan:
    """Plan the balancing of a fold's training rows with the strategy ``cfg.balance``.

    Args:
        y_train: class indices of the fold's training rows (never validation or holdout).
        n_classes: number of classes.
        cfg: the recipe's training settings (strategy, augmentation, SMOTE budget).
        seed: random seed for samplers.

    Returns:
        The plan, its ``capabilities`` those the strategy declares.

    Raises:
        ConfigError: unknown strategy ("did you mean …").
    """
    strategy: BalanceStrategy = BALANCERS.get(cfg.balance)
    return strategy(np.asarray(y_train, dtype=np.int64), n_classes, cfg, seed)


def _all_rows(y: np.ndarray) -> np.ndarray:
    return np.arange(len(y))


@register_strategy("none", Capabilities())
def plan_none(y: np.ndarray, n_classes: int, cfg: TrainConfig, seed: int) -> BalancePlan:
    """Train on the fold's training rows as they are."""
    return BalancePlan(_all_rows(y))


@register_strategy("class_weight", Capabilities(weights_classes=True))
def plan_class_weight(y: np.ndarray, n_classes: int, cfg: TrainConfig, seed: int) -> BalancePlan:
    """Scale each class's loss by its inverse frequency."""
    return BalancePlan(_all_rows(y), class_weight=inverse_frequency_weights(y, n_classes))


def _resample_rows(sampler: Any, y: np.ndarray) -> np.ndarray:
    """Resample row positions (not pixels): images are gathered once, after resampling."""
    resampled, _ = sampler.fit_resample(_all_rows(y).reshape(-1, 1), y)
    return resampled.ravel()


@register_strategy("undersample", Capabilities(resamples_rows=True))
def plan_undersample(y: np.ndarray, n_classes: int, cfg: TrainConfig, seed: int) -> BalancePlan:
    """imbalanced-learn's RandomUnderSampler on row positions."""
    from imblearn.under_sampling import RandomUnderSampler

    return BalancePlan(_resample_rows(RandomUnderSampler(random_state=seed), y))


@register_strategy("oversample", Capabilities(resamples_rows=True))
def plan_oversample(y: np.ndarray, n_classes: int, cfg: TrainConfig, seed: int) -> BalancePlan:
    """imbalanced-learn's RandomOverSampler on row positions."""
    from imblearn.over_sampling import RandomOverSampler

    return BalancePlan(_resample_rows(RandomOverSampler(random_state=seed), y))


@register_strategy(
    "augment_oversample", Capabilities(adds_rows_on_read=True, augments_copies_per_batch=True)
)
def plan_augment_oversample(
    y: np.ndarray, n_classes: int, cfg: TrainConfig, seed: int
) -> BalancePlan:
    """Top minority classes up with augmented copies, each augmented as its batch is read
    (:class:`StreamingAugmentOversampler`): O(batch) memory."""
    sampler = StreamingAugmentOversampler(augment=cfg.augment, random_state=seed)
    return BalancePlan(_all_rows(y), rows_sampler=sampler)


@register_strategy("smote", Capabilities(adds_rows_on_read=True))
def plan_smote(y: np.ndarray, n_classes: int, cfg: TrainConfig, seed: int) -> BalancePlan:
    """SMOTE streamed from the shards (:class:`StreamingSMOTE`): O(batch) memory."""
    return BalancePlan(_all_rows(y), rows_sampler=StreamingSMOTE(random_state=seed))


@register_strategy("balanced_batches", Capabilities(balanced_batches=True))
def plan_balanced_batches(
    y: np.ndarray, n_classes: int, cfg: TrainConfig, seed: int
) -> BalancePlan:
    """No resampling here; the input pipeline draws class-balanced batches (O(batch) memory)."""
    return BalancePlan(_all_rows(y))


def _check_images(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X)
    y = np.asarray(y, dtype=np.int64)
    if X.ndim != 4:
        raise ValueError(f"expected images shaped (n, height, width, channels), got {X.shape}")
    if len(X) != len(y):
        raise ValueError(f"X has {len(X)} images but y has {len(y)} labels")
    return X, y
