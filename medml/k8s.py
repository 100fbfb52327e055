"""Kubernetes pod specs for training one fold per GPU pod (pure functions; no Airflow import).

The pod runs the same entry point as the local backend — ``medml train --run-dir R --fold K`` —
so the container and the worker share one code path. Credentials come from a Kubernetes Secret
referenced by name (``envFrom``), never inline; the pod runs as a non-root user without
privilege escalation, with resource requests and limits set.
"""

from __future__ import annotations

import re
from typing import Any

from medml.config import KubernetesConfig


def fold_command(run_dir: str, fold: int) -> list[str]:
    """Arguments of the trainer image's ``medml`` entry point for one fold."""
    return ["train", "--run-dir", run_dir, "--fold", str(fold)]


def pod_name(recipe: str, fold: int) -> str:
    """A DNS-1123 pod name prefix for a fold (Kubernetes adds a random suffix)."""
    base = re.sub(r"[^a-z0-9]+", "-", f"medml-{recipe}-fold-{fold}".lower()).strip("-")
    return base[:50].rstrip("-")


def container_resources(config: KubernetesConfig) -> dict[str, dict[str, str]]:
    """Requests and limits: CPU/memory requested, GPUs limited (``nvidia.com/gpu``)."""
    limits = {"cpu": config.cpu_limit, "memory": config.memory_limit}
    if config.gpus:
        limits["nvidia.com/gpu"] = str(config.gpus)
    return {"requests": {"cpu": config.cpu_request, "memory": config.memory_request},
            "limits": limits}  # fmt: skip


def security_context() -> dict[str, Any]:
    """Container security: non-root, no privilege escalation, no extra capabilities."""
    return {"runAsNonRoot": True, "runAsUser": 10001, "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]}}  # fmt: skip


def fold_pod_manifest(config: KubernetesConfig, recipe: str, run_dir: str, fold: int) -> dict:
    """The full ``v1/Pod`` manifest for one fold (what the operator submits)."""
    container: dict[str, Any] = {
        "name": "trainer",
        "image": config.image,
        "imagePullPolicy": config.image_pull_policy,
        "command": ["medml"],
        "args": fold_command(run_dir, fold),
        "resources": container_resources(config),
        "securityContext": security_context(),
        "env": [
            {"name": "MEDML_HOME", "value": "/data"},
            {"name": "TF_CPP_MIN_LOG_LEVEL", "value": "2"},
        ],  # fmt: skip
    }
    if config.secret_name:
        container["envFrom"] = [{"secretRef": {"name": config.secret_name}}]
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "serviceAccountName": config.service_account,
        "securityContext": {"runAsNonRoot": True, "fsGroup": 10001},
        "containers": [container],
        "nodeSelector": dict(config.node_selector),
        "tolerations": [dict(t) for t in config.tolerations],
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": pod_name(recipe, fold) + "-",
            "namespace": config.namespace,
            "labels": {"app.kubernetes.io/name": "medml-trainer", "medml/fold": str(fold)},
        },  # fmt: skip
        "spec": spec,
    }


def fold_pod_kwargs(config: KubernetesConfig, recipe: str, run_dir: str, fold: int) -> dict:
    """Keyword arguments of one mapped ``KubernetesPodOperator`` (``expand_kwargs``)."""
    return {
        "pod_template_dict": fold_pod_manifest(config, recipe, run_dir, fold),
        "namespace": config.namespace,
        "image": config.image,
        "cmds": ["medml"],
        "arguments": fold_command(run_dir, fold),
    }
