"""Static checks of the images and the compose stack (no Docker engine on development machines)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

from tests.conftest import REPO_ROOT

DOCKER = REPO_ROOT / "docker"


def _copied_sources(dockerfile: str) -> list[str]:
    sources = []
    for line in dockerfile.splitlines():
        if line.startswith("COPY"):
            parts = [p for p in line.split()[1:] if not p.startswith("--")]
            sources += parts[:-1]
    return sources


def test_dockerfiles_copy_files_that_exist() -> None:
    for name in ("trainer.Dockerfile", "airflow.Dockerfile"):
        text = (DOCKER / name).read_text()
        for source in _copied_sources(text):
            assert (REPO_ROOT / source).exists(), f"{name} copies missing {source}"


def test_trainer_entrypoint_is_the_medml_console_script() -> None:
    text = (DOCKER / "trainer.Dockerfile").read_text()
    assert 'ENTRYPOINT ["medml"]' in text
    assert re.search(r"^USER 10001$", text, re.M)  # non-root
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["medml"] == "medml.cli:main"
    assert "uv sync --frozen" in text  # installed from the lock
    # GPU TensorFlow from the base image, not the lock's CPU-only wheel
    assert text.count("--no-install-package tensorflow-cpu") == 2
    assert "--system-site-packages" in text and "is_built_with_cuda" in text


def test_compose_services_reference_existing_dockerfiles_and_commands() -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "minio", "mlflow", "airflow-api-server", "airflow-scheduler",
            "airflow-dag-processor"} <= set(services)  # fmt: skip
    lock = (REPO_ROOT / "uv.lock").read_text()
    for name, service in services.items():
        build = service.get("build")
        if build:
            assert (DOCKER / build["context"] / build["dockerfile"]).is_file(), name
        command = service.get("entrypoint") or service.get("command") or []
        if command and command[0] in {"airflow", "mlflow"}:
            assert f'name = "{"apache-airflow" if command[0] == "airflow" else "mlflow"}"' in lock
    for volume in services["mlflow"].get("volumes", []):
        assert volume.split(":")[0] in compose["volumes"]


def test_helm_values_match_the_images_the_lock_and_medml(tmp_path: Path) -> None:
    """The official chart's values: same Airflow as the lock/image, Secret and env medml uses."""
    from medml.config import KubernetesConfig

    helm = REPO_ROOT / "deploy" / "helm"
    common = yaml.safe_load((helm / "values-common.yaml").read_text())
    lock = (REPO_ROOT / "uv.lock").read_text()
    version = common["airflowVersion"]
    assert f'name = "apache-airflow"\nversion = "{version}"' in lock
    assert f"FROM apache/airflow:{version}" in (DOCKER / "airflow.Dockerfile").read_text()
    assert yaml.safe_load(common["extraEnvFrom"]) == [
        {"secretRef": {"name": KubernetesConfig().secret_name}},
        {"secretRef": {"name": "medml-audit"}},
    ]
    from medml.policy import load_policy

    policy_text = yaml.safe_load(common["extraConfigMaps"]["medml-policy"]["data"])["policy.toml"]
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text(policy_text)
    policy = load_policy(policy_file, uid=0)  # a file medml accepts, with a deployment's rules
    assert not policy.local_admin and policy.require_audit_key and policy.require_anchor
    mount = next(m for m in common["volumeMounts"] if m["name"] == "medml-policy")
    policy_env = next(e["value"] for e in common["env"] if e["name"] == "MEDML_POLICY")
    assert mount["readOnly"] and policy_env == f"{mount['mountPath']}/policy.toml"
    env = {item["name"] for item in common["env"]}
    sources = "".join(p.read_text() for p in (REPO_ROOT / "medml").rglob("*.py"))
    sources += (REPO_ROOT / "dags" / "medml_retrain.py").read_text()
    assert all(f'"{name}"' in sources for name in env - {"MLFLOW_TRACKING_URI"}), env
    mounts = common["workers"]["extraVolumeMounts"]
    assert any(m["mountPath"] == next(e["value"] for e in common["env"]
               if e["name"] == "MEDML_HOME") for m in mounts)  # fmt: skip
    executors = {}
    for name in ("values-kubernetes-executor.yaml", "values-celery-executor.yaml"):
        executors[name] = yaml.safe_load((helm / name).read_text())["executor"]
    assert sorted(executors.values()) == ["CeleryExecutor", "KubernetesExecutor"]


def test_celery_topology_is_the_one_the_deployment_test_runs() -> None:
    """Compose's Celery overlay and the Helm Celery values describe what
    tests/deploy/test_celery_deployment.py runs: Redis broker, two workers with their own
    MEDML_HOME, run directories on S3 (MEDML_RUN_ROOT), an MLflow tracking server."""
    overlay = yaml.safe_load((DOCKER / "compose.celery.yaml").read_text())
    services = overlay["services"]
    workers = {name: s for name, s in services.items() if "celery" in s.get("command", [])}
    assert len(workers) == 2 and "redis" in services
    homes = set()
    for worker in workers.values():
        env = worker["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:")
        assert env["MEDML_RUN_ROOT"].startswith("s3://")
        assert env["MLFLOW_TRACKING_URI"].startswith("http://mlflow:")
        homes |= {v.split(":")[0] for v in worker["volumes"] if v.endswith(env["MEDML_HOME"])}
    assert len(homes) == 2  # nothing shared between the workers but S3 and MLflow
    base = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    for name in ("airflow-api-server", "airflow-scheduler", "airflow-dag-processor"):
        assert name in base and services[name]["environment"]["AIRFLOW__CORE__EXECUTOR"] == (
            "CeleryExecutor"
        )
    assert "--artifacts-destination=s3://medml-mlflow/artifacts" in base["mlflow"]["command"]

    celery = yaml.safe_load((REPO_ROOT / "deploy" / "helm" / "values-celery-executor.yaml")
                            .read_text())  # fmt: skip
    assert celery["executor"] == "CeleryExecutor" and celery["redis"]["enabled"]
    assert celery["workers"]["replicas"] == 2
    env = {item["name"]: item["value"] for item in celery["env"]}
    assert env["MEDML_RUN_ROOT"].startswith("s3://")
    common = yaml.safe_load((REPO_ROOT / "deploy" / "helm" / "values-common.yaml").read_text())
    assert {item["name"] for item in common["env"]} <= set(env)  # Helm replaces the list
    assert all("emptyDir" in volume for volume in celery["workers"]["extraVolumes"])
    test = (REPO_ROOT / "tests" / "deploy" / "test_celery_deployment.py").read_text()
    assert all(f'"{key}"' in test for key in ("MEDML_RUN_ROOT", "AIRFLOW__CELERY__BROKER_URL",
                                              "MLFLOW_TRACKING_URI"))  # fmt: skip
