"""What the MLflow UI shows of medml's experiments and runs: training runs, and who made them."""

from __future__ import annotations

import getpass

from medml.tracking import Tracking


def test_experiments_open_on_training_runs_and_runs_say_who_created_them() -> None:
    tracking = Tracking.from_env()
    client = tracking.activate()
    run_id = tracking.pipeline_run("medml-kidney-ct", "key-1", "run-1", {"medml.recipe": "x"})
    experiment = client.get_experiment_by_name("medml-kidney-ct")
    # MLflow 3 opens an experiment without a kind on its GenAI overview, with a pop-up
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    tags = client.get_run(run_id).data.tags
    assert tags["mlflow.user"] == getpass.getuser()  # "Created by" in the runs table
    assert tags["medml.recipe"] == "x" and tags["medml.kind"] == "pipeline"
