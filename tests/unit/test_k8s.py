"""Fold pod specs: image, args, GPU limit, tolerations, security, no inline secrets; they
deserialize into the Kubernetes API models."""

from __future__ import annotations

from medml.config import load_recipe
from medml.k8s import fold_pod_manifest, pod_name


def _manifest(*overrides: str) -> dict:
    recipe = load_recipe("kidney-ct", overrides=["train.backend=kubernetes", *overrides])
    return fold_pod_manifest(recipe.train.kubernetes, recipe.name, "s3://runs/2026-01-05/r1", 2)


def test_pod_runs_the_same_entry_point_as_the_local_backend() -> None:
    container = _manifest()["spec"]["containers"][0]
    assert container["command"] == ["medml"]
    assert container["args"] == ["train", "--run-dir", "s3://runs/2026-01-05/r1", "--fold", "2"]
    assert container["image"] == "medml-trainer:latest"


def test_gpu_limits_tolerations_and_security() -> None:
    manifest = _manifest("train.kubernetes.gpus=2", "train.kubernetes.node_selector={pool: gpu}")
    spec = manifest["spec"]
    container = spec["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]
    assert spec["nodeSelector"] == {"pool": "gpu"}
    assert spec["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["runAsNonRoot"] is True
    assert spec["restartPolicy"] == "Never"


def test_credentials_only_by_secret_reference() -> None:
    container = _manifest()["spec"]["containers"][0]
    assert container["envFrom"] == [{"secretRef": {"name": "medml-s3"}}]
    names = {e["name"] for e in container["env"]}
    assert not names & {"AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "MLFLOW_TRACKING_TOKEN"}


def test_manifest_validates_against_the_kubernetes_api_models() -> None:
    from kubernetes.client import ApiClient, V1Pod

    class _Response:
        def __init__(self, data: str) -> None:
            self.data = data

    import json

    pod = ApiClient().deserialize(_Response(json.dumps(_manifest())), V1Pod)
    assert pod.spec.containers[0].resources.limits["nvidia.com/gpu"] == "1"
    assert pod.spec.containers[0].security_context.allow_privilege_escalation is False
    assert pod.spec.containers[0].env_from[0].secret_ref.name == "medml-s3"
    assert pod_name("Kidney CT!", 3) == "medml-kidney-ct-fold-3"
