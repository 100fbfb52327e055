"""Every shipped recipe runs end to end, as written, on a phantom of its own dataset's shape.

The budget shrinks for all (one epoch, a small set). The recipe's layout, image size, channels,
network, folds, validation and augmentation are its own, except for the DenseNet121 recipe
(HEAVY below), whose run also shrinks the input, the batch and the folds, and starts from random
weights: what it changes, and why, is listed there.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medml.config import RECIPES_DIR, load_recipe
from medml.data.synthetic import synthesize

pytestmark = pytest.mark.integration

SHIPPED = sorted(path.stem for path in RECIPES_DIR.glob("*.yaml"))
PHANTOM_SIZE = {"capsule-endoscopy": 200, "capsule-endoscopy-seed001": 200, "kidney-ct": 200,
                "kidney-ct-seed000": 200}  # fmt: skip
# DenseNet121 at 229x229 takes 8 GB and minutes per fold on 2 CPU cores, and ~100 s of graph
# tracing per fold at any input size (a profile: tracing the train step and building Adam's
# 740 slot variables are 95 of a fold's 120 s at 32x32), so its run shrinks the input, the
# batch and the folds (2 of its 5); its ImageNet weights are a local file a test cannot have, so
# it starts from random weights. Still its backbone, head, schedule and callbacks.
HEAVY = {"capsule-endoscopy-seed001": ["train.weights=null", "image.size=32",
                                       "train.batch_size=8", "split.folds=2"]}  # fmt: skip


def test_every_recipe_has_a_phantom_generator() -> None:
    from medml.data.synthetic import DEFAULT_LAYOUT

    assert set(SHIPPED) <= set(DEFAULT_LAYOUT)


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in SHIPPED]
)
def test_the_recipe_runs_end_to_end_on_its_phantom(name: str, tmp_path: Path) -> None:
    from medml import pipeline, runs
    from medml.report import summary as run_summary
    from medml.tracking import Tracking

    recipe = load_recipe(name)
    data = synthesize(name, tmp_path / "data", n=PHANTOM_SIZE.get(name, 90), seed=1,
                      image_size=max(64, recipe.image.size)).root  # fmt: skip
    budget = ["train.epochs=1", "data.min_images_per_class=2", "registry.gate.thresholds={}",
              "registry.gate.require_better_than_chance=false", *HEAVY.get(name, [])]  # fmt: skip
    ctx = runs.init_run(tmp_path / "run", data, name, overrides=budget)
    result = pipeline.run_all(ctx, Tracking.from_env(), echo=lambda _: None)

    assert result["version"] == "1"
    report = json.loads(ctx.layout.split_report.read_text())
    assert len(report["fold_sizes"]) == ctx.recipe.split.folds
    models = ctx.layout.fold_models(ctx.recipe.split.folds)
    assert all(path.is_file() for path in models)
    if recipe.split.validation == "dataset":
        assert report["strategy"].startswith("the dataset's validation folder (one model")
    summary = run_summary(ctx.layout.root)
    assert recipe.name in summary and f"dataset overview: {ctx.layout.overview}" in summary
    for figure in ("balancing", "class_counts", "samples", "augmented"):
        assert (ctx.layout.overview / f"{figure}.png").stat().st_size > 5000
    counts = json.loads(ctx.layout.fold(0).history.read_text())["class_counts"]
    assert len(counts["before"]) == len(recipe.data.classes) and sum(counts["before"]) > 0
    if recipe.split.validation == "folds":  # fold 0 trains on the other folds' rows
        assert sum(counts["before"]) == sum(report["fold_sizes"]) - report["fold_sizes"][0]
    if recipe.train.balance in {"smote", "oversample", "augment_oversample"}:
        assert counts["after"] == [max(counts["before"])] * len(recipe.data.classes)
    assert (counts["class_weight"] is not None) == (recipe.train.balance == "class_weight")
    client = Tracking.from_env().activate()
    run_id = client.get_model_version(recipe.registry.model_name, "1").run_id
    logged = {Path(item.path).name for item in client.list_artifacts(run_id, "overview")}
    assert logged == {"balancing.png", "class_counts.png", "samples.png", "augmented.png"}
    if recipe.evaluate.positive_class:  # binary: the review shows the rates at the threshold too
        from medml.review import review

        text, _ = review(Tracking.from_env(), recipe.registry.model_name, "1",
                         out=tmp_path / "review.html")  # fmt: skip
        point = json.loads(ctx.layout.evaluation.operating_point.read_text())
        assert f"{point['positive_class']} >= {point['threshold']:.3f}" in text
        row = next(line for line in text.splitlines() if line.startswith("sensitivity at thr"))
        assert row.split()[3] == f"{point['holdout']['sensitivity']:.3f}", row
