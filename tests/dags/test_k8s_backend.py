"""The kubernetes backend: the operator's own pod builder renders medml's fold pod."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from medml.config import load_recipe
from medml.k8s import fold_pod_kwargs

DAGS_DIR = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture(autouse=True)
def _airflow_home(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW_HOME", os.environ.get("AIRFLOW_HOME") or str(tmp_path / "af"))
    monkeypatch.syspath_prepend(str(DAGS_DIR))  # as Airflow does for its DAGs folder


def test_kubernetes_pod_operator_builds_the_fold_pod() -> None:
    from medml_common import FoldPodOperator

    recipe = load_recipe(
        "kidney-ct",
        overrides=["train.backend=kubernetes", "train.kubernetes.image=registry.local/medml:1.2"],
    )
    config = recipe.train.kubernetes
    run_dir = "s3://medml-runs/2026-01-05/backfill__1"
    operator = FoldPodOperator(
        task_id="train_pod", pod_kwargs=fold_pod_kwargs(config, recipe.name, run_dir, 1)
    ).build()  # the KubernetesPodOperator the task runs
    assert type(operator).__name__ == "KubernetesPodOperator"
    assert operator.get_logs and operator.on_finish_action.value == "delete_pod"
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


def test_parsing_the_retrain_dag_does_not_import_the_kubernetes_provider() -> None:
    """The provider costs ~0.75 s to import; it loads only when a pod task runs."""
    import subprocess
    import sys

    dags = DAGS_DIR
    probe = (
        "import sys, runpy; sys.path.insert(0, sys.argv[1]); "
        "runpy.run_path(sys.argv[1] + '/medml_retrain.py'); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('kubernetes', "
        "'kubernetes_asyncio') or m.startswith('airflow.providers.cncf.kubernetes.operators')))"
    )
    result = subprocess.run([sys.executable, "-c", probe, str(dags)], capture_output=True,
                            text=True, env={**os.environ}, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
