"""Typed configuration: a recipe (one per dataset/system) plus overrides.

A recipe lives in ``recipes/<name>.yaml``. Overrides are layered on top, in this order:
the recipe, then an optional params file (``params.yaml``, shared with DVC), then
``--set key=value`` pairs from the command line or the Airflow run's conf. Every layer is
validated by the same pydantic models, so a typo in any of them is a clear error naming the
key, not a silently ignored setting.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from medml.errors import ConfigError
from medml.extensions import BALANCERS, LAYOUTS, METRICS, MODELS

__all__ = ["ConfigError", "Recipe", "load_recipe"]

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def layout_name(name: str) -> str:
    """``auto`` or a registered layout's name (:data:`~medml.extensions.LAYOUTS`)."""
    return name if name == "auto" else LAYOUTS.check(name)


def refuse_download(weights: str | Path | None) -> None:
    """Raise if ``weights`` names weights Keras would download (``imagenet``).

    Raises:
        ConfigError: ``weights`` is ``"imagenet"``.
    """
    if str(weights) == "imagenet":
        raise ConfigError(
            "weights='imagenet' would download at run time, which medml never does: download "
            "the backbone's notop weights file once and give its local path in train.weights "
            "(or null to train from scratch)"
        )


# Names checked against their registry (medml.extensions): the registry is the only list.
LayoutName = Annotated[str, AfterValidator(layout_name)]
ModelName = Annotated[str, AfterValidator(MODELS.check)]
StrategyName = Annotated[str, AfterValidator(BALANCERS.check)]
MetricName = Annotated[str, AfterValidator(METRICS.check)]


DEFAULT_DICOM_GROUP_TAGS = ("PatientID", "StudyInstanceUID")
"""``data.dicom_group_tags`` by default: DICOM keywords (a test checks them against pydicom)."""


class DataConfig(_Strict):
    """What the dataset looks like."""

    layout: LayoutName = Field(default="auto", description="a registered layout, or auto")
    classes: list[str] = Field(
        min_length=2, description="the class names, as the folders or the CSV's labels spell them"
    )
    extensions: list[str] = Field(
        default=[".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"],
        description="image file extensions read (.dcm always is in the dicom layout); other "
        "files are ignored and counted",
    )
    csv_file: str = Field(
        default="Training_set.csv", description="CSV layout: the manifest at the dataset root"
    )
    csv_path_column: str = Field(
        default="filename", description="CSV layout: the column of each image's path"
    )
    csv_label_column: str = Field(
        default="label", description="CSV layout: the column of each image's class"
    )
    csv_image_dir: str = Field(
        default="train", description="CSV layout: the folder the paths are relative to"
    )
    csv_group_column: str | None = Field(
        default=None,
        description="CSV layout: the column naming each image's patient (or study), used as "
        "its group instead of a groups.csv; stored pseudonymised",
    )
    min_images_per_class: int = Field(
        default=10, ge=1, description="validation fails when a class has fewer usable images"
    )
    max_quarantine_fraction: float = Field(
        default=0.05,
        ge=0.0,
        le=1.0,
        description="validation fails when a larger share of the files is quarantined",
    )
    min_image_side: int = Field(default=16, ge=1, description="smaller images are quarantined")
    max_image_side: int = Field(default=16384, ge=1, description="larger images are quarantined")
    multi_frame: Literal["all", "first", "middle"] = Field(
        default="all",
        description="which frames of a multi-frame DICOM / multi-page image "
        "become images: every frame (one group per file), or one chosen frame",
    )
    dicom_group_tags: list[str] = Field(
        default=list(DEFAULT_DICOM_GROUP_TAGS),
        description="DICOM tags that name a "
        "file's patient group, first present wins (else the file); stored pseudonymised",
    )
    groups_missing: Literal["error", "own_group"] = Field(
        default="error",
        description="files not listed in groups.csv: stop, or give each "
        "its own group (counted in the validation report)",
    )

    @field_validator("dicom_group_tags")
    @classmethod
    def _dicom_keywords(cls, value: list[str]) -> list[str]:
        # Every recipe carries the defaults (a saved run's recipe spells them out); only other
        # names are looked up, so a JPEG recipe does not import pydicom (0.2 s) to check them.
        others = [tag for tag in value if tag not in DEFAULT_DICOM_GROUP_TAGS]
        if not others:
            return value
        from pydicom.datadict import tag_for_keyword

        unknown = [tag for tag in others if tag_for_keyword(tag) is None]
        if unknown:
            raise ValueError(f"{unknown} are not DICOM keywords (e.g. PatientID, StudyInstanceUID)")
        return value

    @field_validator("classes")
    @classmethod
    def _unique_classes(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"class names must be unique, got {value}")
        return value

    @model_validator(mode="after")
    def _group_column_is_its_own(self) -> DataConfig:
        if self.csv_group_column in (self.csv_path_column, self.csv_label_column):
            raise ValueError(
                f"csv_group_column={self.csv_group_column!r} is also the path or label column; "
                "name the column of each image's patient"
            )
        return self


class ImageConfig(_Strict):
    """How images are decoded and resized into shards."""

    size: int = Field(default=64, ge=8, le=1024, description="side of the square model input")
    channels: Literal[1, 3] = Field(default=1, description="1: grey; 3: RGB")
    aspect: Literal["resize", "letterbox"] = Field(
        default="resize", description="stretch to a square, or pad to keep the aspect ratio"
    )
    clahe: bool = Field(default=False, description="contrast-limited histogram equalisation")
    ct_windows: list[str] = Field(
        default=["abdomen"],
        min_length=1,
        max_length=3,
        description="CT window(s) for DICOM: presets (abdomen, soft_tissue, lung, bone, brain, "
        "liver) or 'center/width' in HU; three windows become the three channels",
    )
    shard_size: int = Field(default=1024, ge=16, description="images per preprocessed shard")
    workers: int = Field(default=0, ge=0, description="decode threads; 0 = one per core")

    @field_validator("ct_windows")
    @classmethod
    def _known_windows(cls, value: list[str]) -> list[str]:
        from medml.data.images import parse_window

        for spec in value:
            parse_window(spec)
        if len(value) == 2:
            raise ValueError("give one CT window (grey) or three (stacked as R, G, B), not two")
        return value

    @model_validator(mode="after")
    def _windows_fit_channels(self) -> ImageConfig:
        if len(self.ct_windows) == 3 and self.channels != 3:
            raise ValueError("three ct_windows are stacked as colour channels: set channels: 3")
        return self


class SplitConfig(_Strict):
    """Holdout and k-fold settings."""

    test_size: float = Field(
        default=0.2,
        ge=0.0,
        lt=0.5,
        description="share of images (by group) held out untouched for the final estimate; 0: "
        "cross-validation only, the out-of-fold predictions are the estimate (small sets)",
    )
    folds: int = Field(
        default=3, ge=1, le=20, description="fold models; 1 only with validation: dataset or cut"
    )
    seed: int = Field(default=42, description="seed of the holdout cut and the folds")
    validation: Literal["folds", "dataset", "cut"] = Field(
        default="folds",
        description="folds: k-fold cross-validation; dataset: the dataset's own val/ or "
        "validation/ folder validates one model (split.folds=1) trained on the rest; cut: a "
        "fixed stratified (group-aware) cut of validation_size validates one model",
    )
    validation_size: float = Field(
        default=0.25,
        gt=0.0,
        le=0.5,
        description="validation: cut — the share of the non-holdout images (by group) that "
        "validates the one model, as 1 in round(1 / validation_size) (the split report gives "
        "the share cut)",
    )
    calibration_size: float = Field(
        default=0.1,
        ge=0.0,
        le=0.3,
        description="validation: folds — the share of the non-holdout images (by group), as 1 "
        "in round(1 / calibration_size), that no fold model trains or validates on: the fold "
        "ensemble's averaged output there fits the temperature (and a binary operating point) "
        "and estimates the registered ensemble itself; 0, or a class too small to spare an "
        "image: fitted on single fold models' out-of-fold outputs instead (the split report "
        "says which)",
    )
    near_duplicates: Literal["group", "report", "fail"] = Field(
        default="group",
        description="images with no patient group: link look-alikes into pseudo-patient groups "
        "(group), only count those across the holdout (report), or stop if any cross it (fail)",
    )
    near_duplicate_similarity: float = Field(
        default=0.95,
        gt=0.0,
        le=1.0,
        description="least correlation of two 16x16 grey thumbnails, at their best relative "
        "shift of up to one thumbnail pixel, that makes a near-duplicate",
    )
    near_duplicate_max_group: int = Field(
        default=0,
        ge=0,
        description="largest pseudo-patient group; 0: the smallest class / (folds + 1) (with "
        "validation: cut, 1 / validation_size parts instead of the folds)",
    )

    @property
    def parts(self) -> int:
        """How many parts the training images are cut into: the folds, the validation cut's
        1-in-n, or one (a dataset's own validation folder)."""
        if self.validation == "cut":
            return max(2, round(1.0 / self.validation_size))
        return self.folds

    @model_validator(mode="after")
    def _folds_match_validation(self) -> SplitConfig:
        if self.validation in ("dataset", "cut") and self.folds != 1:
            raise ValueError(
                f"split.validation={self.validation} trains one model on one fixed validation "
                f"set; set split.folds=1 (got {self.folds})"
            )
        if self.validation == "folds" and self.folds < 2:
            raise ValueError("cross-validation needs split.folds >= 2")
        return self


class AugmentConfig(_Strict):
    """Random augmentations (Keras preprocessing layers); 0/false switches one off.

    The defaults are the seeds' set: rotation ±25°, horizontal flip, translation, Gaussian blur,
    zoom and brightness (±30% of the value range).
    """

    rotation_degrees: float = Field(
        default=25.0, ge=0.0, le=180.0, description="rotate by up to ± this many degrees"
    )
    horizontal_flip: bool = Field(default=True, description="mirror left-right with p = ½")
    translate: float = Field(
        default=0.1, ge=0.0, lt=1.0, description="shift by up to ± this share of each side"
    )
    zoom: float = Field(default=0.2, ge=0.0, lt=1.0, description="zoom in or out by up to ± this")
    blur_sigma: float = Field(
        default=1.0,
        ge=0.0,
        le=10.0,
        description="3x3 Gaussian blur, σ drawn from [0, blur_sigma] for each batch",
    )
    brightness: float = Field(
        default=0.3, ge=0.0, lt=1.0, description="add up to ± this share of the value range"
    )
    brightness_factor: tuple[float, float] | None = Field(
        default=None,
        description="multiply by a factor drawn from [low, high] (Keras 2's brightness_range, "
        "e.g. [0.7, 1.3]); null: off",
    )
    fill_mode: Literal["constant", "nearest", "reflect", "wrap"] = Field(
        default="constant",
        description="what rotation, translation and zoom put where the image moved away from "
        "(Keras 2's ImageDataGenerator used nearest)",
    )
    policy: Literal["all", "one_of"] = Field(
        default="all",
        description="all: every enabled op, stacked; one_of: one enabled op per image, at random",
    )
    sources: Literal["without_replacement", "with_replacement"] = Field(
        default="without_replacement",
        description="augment_oversample: which originals are copied — each as evenly as possible "
        "(without replacement, repeating only when a class needs more copies than it has), or "
        "uniformly at random",
    )

    @field_validator("brightness_factor")
    @classmethod
    def _factor_range(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not 0.0 <= value[0] <= value[1]:
            raise ValueError(f"give [low, high] with 0 <= low <= high, got {list(value)}")
        return value


class ReduceLROnPlateauConfig(_Strict):
    """Keras' ReduceLROnPlateau on ``val_loss``."""

    factor: float = Field(default=0.1, gt=0.0, lt=1.0, description="multiply the rate by this")
    patience: int = Field(default=5, ge=1, description="epochs without a better val_loss first")
    min_lr: float = Field(default=0.0, ge=0.0, description="the rate never goes below this")


class ConvBlock(_Strict):
    """One convolution block of ``train.model: cnn``: Conv2D (ReLU), then pooling, then dropout."""

    filters: int = Field(ge=1, description="output channels of the Conv2D")
    kernel: int = Field(default=3, ge=1, description="side of the square kernel")
    padding: Literal["same", "valid"] = Field(
        default="same", description="same keeps the size; valid shrinks it by kernel - 1"
    )
    pool: Literal["max", "average"] | None = Field(default="max", description="null: none")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="after the pooling")


class CNNConfig(_Strict):
    """The architecture of ``train.model: cnn``, declared as data.

    The defaults are medml's ``small_cnn``. Seed 002's network, for example, is four valid-padded
    blocks of 32/64/128/128 filters with max pooling, ``head: flatten``, ``dropout: 0.5``,
    ``dense: [512]``, ``dense_dropout: 0``.
    """

    blocks: list[ConvBlock] = Field(
        default_factory=lambda: [ConvBlock(filters=f) for f in (16, 32, 64, 64)], min_length=1
    )
    head: Literal["flatten", "global_max", "global_average"] = Field(
        default="global_max", description="how the feature maps become a vector"
    )
    dropout: float = Field(default=0.3, ge=0.0, lt=1.0, description="after the head, before dense")
    dense: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [64], description="hidden dense widths (ReLU)"
    )
    dense_dropout: float = Field(default=0.3, ge=0.0, lt=1.0, description="after each dense")


class KubernetesConfig(_Strict):
    """Where and how a fold's pod runs when ``train.backend`` is ``kubernetes``."""

    image: str = Field(default="medml-trainer:latest", description="the trainer image")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        default="IfNotPresent", description="Kubernetes' imagePullPolicy of the pod"
    )
    namespace: str = Field(default="medml", description="namespace the fold pods run in")
    service_account: str = Field(
        default="medml-trainer", description="service account of the fold pods"
    )
    gpus: int = Field(default=1, ge=0, description="nvidia.com/gpu limit per fold pod")
    cpu_request: str = Field(default="4", description="CPU request per fold pod")
    cpu_limit: str = Field(default="8", description="CPU limit per fold pod")
    memory_request: str = Field(default="16Gi", description="memory request per fold pod")
    memory_limit: str = Field(default="32Gi", description="memory limit per fold pod")
    node_selector: dict[str, str] = Field(
        default={}, description="node labels a fold pod must run on"
    )
    tolerations: list[dict[str, str]] = Field(
        default=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        description="taints the fold pods tolerate (default: GPU nodes')",
    )
    secret_name: str | None = Field(
        default="medml-s3", description="Secret with S3/MLflow credentials, mounted as env"
    )
    run_store: str | None = Field(
        default=None,
        description="s3://bucket/prefix/ where run directories are shared with the pods "
        "(else $MEDML_RUN_STORE)",
    )


class TrainConfig(_Strict):
    """One fold's training settings."""

    backend: Literal["local", "kubernetes"] = Field(
        default="local",
        description="where each fold trains: in the task's process, or one GPU pod per fold",
    )
    kubernetes: KubernetesConfig = KubernetesConfig()

    model: ModelName = Field(default="small_cnn", description="a registered architecture")
    cnn: CNNConfig = Field(
        default_factory=CNNConfig, description="the architecture when model is cnn"
    )
    weights: str | None = Field(
        default=None,
        description="local path of the backbone's notop Keras weights file (never downloaded); "
        "null trains from scratch",
    )
    trainable_layers: int | None = Field(
        default=None, ge=1, description="train only the backbone's last N layers (null: all)"
    )
    label_smoothing: float = Field(
        default=0.0, ge=0.0, lt=1.0, description="of the cross-entropy loss (0: off)"
    )
    mixed_precision: Literal["auto"] | bool = Field(
        default="auto", description="mixed_float16 compute; auto = when a GPU is visible"
    )
    jit_compile: Literal["auto"] | bool = Field(
        default="auto", description="XLA compilation; auto = when a GPU is visible"
    )
    epochs: int = Field(default=30, ge=1, description="most epochs a fold trains")
    batch_size: int = Field(default=32, ge=1, description="images per training step")
    learning_rate: float = Field(default=1e-3, gt=0.0, description="Adam's learning rate")
    learning_rate_decay: float = Field(
        default=0.0,
        ge=0.0,
        description="Keras 2's Adam(decay=…): the rate at step t is learning_rate / (1 + decay·t)",
    )
    reduce_lr_on_plateau: ReduceLROnPlateauConfig | None = Field(
        default=None, description="multiply the rate by factor when val_loss stalls (null: off)"
    )
    extra_metrics: list[Literal["f1", "auc", "precision", "recall"]] = Field(
        default_factory=list,
        description="training-time metrics besides accuracy (macro-F1, AUC, …), in the history",
    )
    dropout: float = Field(
        default=0.3, ge=0.0, lt=1.0, description="small_cnn's dropout before its classifier"
    )
    patience: int = Field(
        default=6,
        ge=1,
        description="early stopping after this many epochs without a better val_loss",
    )
    keep_best_epoch: bool = Field(
        default=True,
        description="keep the weights of the epoch with the lowest val_loss from min_epochs on "
        "(the validation set chooses the epoch); false: the last epoch's, as seeds that report "
        "their final epoch did",
    )
    min_epochs: int = Field(
        default=10, ge=0, description="early stopping may not stop before this epoch"
    )
    balance: StrategyName = Field(
        default="class_weight",
        description="a registered balancing strategy, applied inside each fold's training part",
    )
    augment: AugmentConfig = AugmentConfig()
    augment_in_training: bool = Field(
        default=False, description="also augment every training batch (not only oversampling)"
    )
    seed: int = Field(default=42, description="seed of weights, shuffling, balancing, augmenting")

    @field_validator("weights")
    @classmethod
    def _no_downloads(cls, value: str | None) -> str | None:
        refuse_download(value)
        return value


class Bound(_Strict):
    """Bounds on one metric; ``None`` leaves that side open."""

    min: float | None = Field(
        default=None, allow_inf_nan=False, description="the metric must be at least this"
    )
    max: float | None = Field(
        default=None, allow_inf_nan=False, description="the metric must be at most this"
    )

    @model_validator(mode="after")
    def _some_bound(self) -> Bound:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self


class GateConfig(_Strict):
    """What a model must pass to get the ``challenger`` alias, keyed by metric name.

    Every model must first be better than chance with confidence
    (:func:`medml.metrics.chance_reasons`); ``thresholds`` add absolute bounds on the holdout
    metrics (a per-class metric such as ``class_sensitivity`` must hold for every class). When
    a ``champion`` exists, it is scored on the same holdout and ``non_inferiority`` gives the
    largest allowed drop per metric.
    Names are those of :data:`medml.extensions.METRICS` (see :mod:`medml.metrics`).
    """

    beats_baseline: bool = Field(
        default=False,
        description="the model must be measurably better than the baseline on the same rows "
        "(the paired 95% interval of the balanced-accuracy difference above zero; needs a "
        "holdout)",
    )
    require_better_than_chance: bool = Field(
        default=True,
        description="the lower 95% bound of balanced accuracy above 1/k, every class's "
        "sensitivity above 1/k, and for classes with at least evaluate.min_class_support "
        "holdout images the exact lower bound of their sensitivity above 1/k; on for every "
        "recipe (switch off only for smoke tests)",
    )
    thresholds: dict[MetricName, Bound] = Field(
        default={},
        description="bounds on holdout metrics by name (a per-class metric holds for every class)",
    )
    operating_point: dict[Literal["sensitivity", "specificity", "ppv"], Bound] = Field(
        default={},
        description="binary recipes (evaluate.positive_class): bounds on the holdout's "
        "sensitivity, specificity and PPV at the operating point's threshold, the decision the "
        "served model returns (thresholds bound the argmax metrics)",
    )

    @field_validator("operating_point")
    @classmethod
    def _rates_are_fractions(cls, bounds: dict[str, Bound]) -> dict[str, Bound]:
        for name, bound in bounds.items():
            for side in (bound.min, bound.max):
                if side is not None and not 0.0 <= side <= 1.0:
                    raise ValueError(f"{name}: a rate's bound is between 0 and 1, not {side}")
        return bounds

    non_inferiority: dict[MetricName, Annotated[float, Field(ge=0.0, le=1.0)]] = Field(
        default={"class_sensitivity": 0.05, "macro_f1": 0.0},
        description="largest drop against the champion, on the same holdout, by metric name",
    )


class RegistryConfig(_Strict):
    """Where the fold ensemble is registered."""

    model_name: str = Field(min_length=1, description="the registered model's name in MLflow")
    experiment: str = Field(default="medml", description="the MLflow experiment of the runs")
    alias: str = Field(
        default="challenger", description="the alias a version that passes the gate gets"
    )
    gate: GateConfig = GateConfig()


class EvaluateConfig(_Strict):
    """What evaluation fits on the out-of-fold predictions (never on the holdout), and below
    how many images a class's numbers are too few to judge."""

    calibrate: bool = Field(
        default=True, description="temperature scaling fitted out-of-fold, applied in the model"
    )
    positive_class: str | None = Field(
        default=None, description="binary recipes: the class the operating point is chosen for"
    )
    target_sensitivity: float = Field(
        default=0.95, gt=0.0, le=1.0, description="sensitivity the operating point reaches OOF"
    )
    conformal_alpha: float = Field(
        default=0.1,
        gt=0.0,
        lt=1.0,
        description="prediction sets that hold the true class with probability >= 1 - alpha "
        "for every class (class-conditional conformal, calibrated on the calibration cut or "
        "out-of-fold, never the holdout); a set of more than one class is a case to refer",
    )
    min_class_support: int = Field(
        default=20,  # medml.metrics.MIN_CLASS_SUPPORT (config must not import metrics)
        ge=1,
        description="a class with fewer evaluated images is flagged 'too few to judge' in every "
        "report, and the gate holds it to its point estimate only, not to its interval",
    )


class Recipe(_Strict):
    """Everything that defines one dataset/system's training run."""

    name: str = Field(description="the recipe's name (runs, tags and `medml recipes` show it)")
    description: str = Field(default="", description="one line on what the recipe is for")
    data: DataConfig
    image: ImageConfig = ImageConfig()
    split: SplitConfig = SplitConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    registry: RegistryConfig

    @model_validator(mode="after")
    def _operating_point_fits(self) -> Recipe:
        positive = self.evaluate.positive_class
        binary = len(self.data.classes) == 2
        if positive is not None and (not binary or positive not in self.data.classes):
            raise ValueError(
                f"evaluate.positive_class={positive!r} needs a binary recipe with that class; "
                f"the classes are {self.data.classes}"
            )
        if positive is None and self.registry.gate.operating_point:
            raise ValueError(
                "registry.gate.operating_point bounds the rates at the binary operating point; "
                "set evaluate.positive_class (and evaluate.target_sensitivity) or remove it"
            )
        return self

    @property
    def chance_balanced_accuracy(self) -> float:
        """Balanced accuracy of a classifier that guesses."""
        return 1.0 / len(self.data.classes)

    def params_hash(self) -> str:
        """Stable short hash of every setting, for tagging and cache keys."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def flat_params(self) -> dict[str, str]:
        """Settings as ``section.key -> value`` strings (MLflow params, tags)."""
        return {key: str(value) for key, value in flatten(self.model_dump(mode="json")).items()}


def recipe_dirs(recipes_dir: Path = RECIPES_DIR) -> list[Path]:
    """Where a recipe name is looked up, in order: ``recipes_dir`` (the shipped recipes),
    then ``$MEDML_HOME/recipes`` (a deployment's own)."""
    from medml.settings import Settings

    return [recipes_dir, Settings.from_env().home / "recipes"]


def recipe_files(recipes_dir: Path = RECIPES_DIR) -> dict[str, Path]:
    """Each recipe name and its file (``<name>.yaml`` or ``.yml``), the first of
    :func:`recipe_dirs` that has it winning."""
    found: dict[str, Path] = {}
    for folder in recipe_dirs(recipes_dir):
        for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
            if path.is_file():  # not a folder named x.yaml
                found.setdefault(path.stem, path)
    return found


def available_recipes(recipes_dir: Path = RECIPES_DIR) -> list[str]:
    """Names of the recipes in :func:`recipe_dirs`."""
    return sorted(recipe_files(recipes_dir))


def parse_overrides(pairs: Iterable[str]) -> dict[str, Any]:
    """Turn ``["train.epochs=2", "split.folds=3"]`` into a nested dict.

    Values are parsed as YAML scalars, so ``2`` is an int, ``0.5`` a float, ``true`` a bool
    and ``[a, b]`` a list.

    Raises:
        ConfigError: a pair has no ``=`` or an empty key.
    """
    dotted: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"--set expects key=value (e.g. train.epochs=2), got {pair!r}")
        dotted.pop(key, None)  # a repeated key: the last one wins, in its own place
        dotted[key] = yaml.safe_load(raw) if raw.strip() else ""
    return _nested_items(dotted)


def _nested_items(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``{"train.epochs": 2}`` as ``{"train": {"epochs": 2}}``, in order (later keys win).

    Raises:
        ConfigError: a key and a key below it are both set (``a=1`` with ``a.b=2``).
    """
    nested: dict[str, Any] = {}
    for key, value in settings.items():
        node = nested
        parts = str(key).split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"setting {key!r} conflicts with another setting of {part!r}")
        node[parts[-1]] = value
    return nested


def with_settings(recipe: Recipe, settings: Mapping[str, Any], *, source: str) -> Recipe:
    """``recipe`` with dotted ``settings`` (``{"train.epochs": 2}``) applied and validated.

    Raises:
        ConfigError: a setting is unknown or invalid; the message names ``source``.
    """
    merged = _deep_merge(recipe.model_dump(mode="json"), _nested_items(settings))
    try:
        return Recipe.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(source, err)) from None


def load_recipe(
    name_or_path: str | Path,
    *,
    params_file: Path | None = None,
    overrides: Mapping[str, Any] | Iterable[str] | None = None,
    recipes_dir: Path = RECIPES_DIR,
) -> Recipe:
    """Load and validate a recipe with its overrides.

    Args:
        name_or_path: a recipe name (e.g. ``kidney-ct``; :func:`recipe_files`) or a YAML
            path.
        params_file: optional YAML whose top-level keys ``data``, ``image``, ``split``,
            ``train`` and ``registry`` override the recipe (other keys are ignored, so the file
            can also carry DVC-only settings).
        overrides: ``key=value`` strings or an already nested dict, applied last.
        recipes_dir: where named recipes live.

    Returns:
        The validated recipe.

    Raises:
        ConfigError: the recipe is unknown, a file is not valid YAML, or a setting is invalid.
    """
    path = Path(name_or_path)
    if not (path.suffix in {".yaml", ".yml"} and path.is_file()):
        named = recipe_files(recipes_dir)
        if str(name_or_path) not in named:
            if path.suffix in {".yaml", ".yml"}:
                raise ConfigError(f"recipe file {path} does not exist")
            known = ", ".join(sorted(named)) or "none"
            raise ConfigError(
                f"unknown recipe {str(name_or_path)!r}; available: {known} (names are looked "
                f"up in {' and '.join(str(d) for d in recipe_dirs(recipes_dir))})"
            )
        path = named[str(name_or_path)]
    merged = _read_yaml(path)
    if params_file is not None:
        params = _read_yaml(params_file)
        recipe_keys = set(Recipe.model_fields) - {"name", "description"}
        merged = _deep_merge(merged, {k: v for k, v in params.items() if k in recipe_keys})
    if overrides:
        if not isinstance(overrides, Mapping):
            overrides = parse_overrides(overrides)
        merged = _deep_merge(merged, dict(overrides))
    try:
        return Recipe.model_validate(merged)
    except ValidationError as err:
        where = f"recipe {path.name} + overrides"
        raise ConfigError(_format_validation_error(where, err)) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        content = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(content, dict):
        raise ConfigError(f"{path} must contain a mapping at the top level")
    return content


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` as ``{"a.b": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _format_validation_error(where: str, err: ValidationError) -> str:
    problems = []
    for item in err.errors():
        key = ".".join(str(part) for part in item["loc"]) or "<root>"
        if item["type"] == "extra_forbidden":
            problems.append(f"unknown key {key!r}")
        else:
            problems.append(f"{key}: {item['msg'].removeprefix('Value error, ')}")
    return f"invalid config ({where}): " + "; ".join(problems)
