"""The kubernetes backend: the operator's own pod builder renders medml's fold pod."""

from __future__ import annotations

import os

import pytest

from medml.config import load_recipe
from medml.k8s import fold_pod_kwargs


@pytest.fixture(autouse=True)
def _airflow_home(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW_HOME", os.environ.get("AIRFLOW_HOME") or str(tmp_path / "af"))


def test_kubernetes_pod_operator_builds_the_fold_pod() -> None:
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    recipe = load_recipe(
        "kidney-ct",
        overrides=["train.backend=kubernetes", "train.kubernetes.image=registry.local/medml:1.2"],
    )
    config = recipe.train.kubernetes
    run_dir = "s3://medml-runs/2026-01-05/backfill__1"
    operator = KubernetesPodOperator(
        task_id="train_pod", get_logs=True, on_finish_action="delete_pod",
        **fold_pod_kwargs(config, recipe.name, run_dir, 1),
    )  # fmt: skip
    pod = operator.build_pod_request_obj(dry_run=True)  # no cluster needed to render
    container = pod.spec.containers[0]
    assert container.image == "registry.local/medml:1.2"
    assert container.command == ["medml"]
    assert container.args == ["train", "--run-dir", run_dir, "--fold", "1"]
    assert container.resources.limits["nvidia.com/gpu"] == "1"
    assert pod.spec.tolerations[0].key == "nvidia.com/gpu"
    assert container.security_context.allow_privilege_escalation is False
    assert container.security_context.run_as_non_root is True
    assert container.env_from[0].secret_ref.name == "medml-s3"
    assert not any("SECRET" in (e.name or "") for e in container.env or [])
    assert pod.metadata.namespace == "medml"
