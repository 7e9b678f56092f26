"""deploy/k8s.yaml: valid for Kubernetes (its own schemas, strict), and true to the image."""

from __future__ import annotations

import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from rnnlm.cli import build_parser
from tests.e2e.test_containers import image_cmd, instructions

ROOT = Path(__file__).resolve().parents[2]
K8S_VERSION = "1.30.0"


def documents() -> list[dict]:  # type: ignore[type-arg]
    return [d for d in yaml.safe_load_all((ROOT / "deploy" / "k8s.yaml").read_text()) if d]


def test_every_resource_validates_strictly() -> None:
    kinds = []
    for doc in documents():
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        kinds.append(doc["kind"])
    assert kinds == ["ConfigMap", "PersistentVolumeClaim", "Deployment", "Service"]


def test_a_typo_is_caught() -> None:
    deployment = next(d for d in documents() if d["kind"] == "Deployment")
    deployment["spec"]["replica"] = deployment["spec"].pop("replicas")
    with pytest.raises(kubernetes_validate.ValidationError, match="replica"):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_the_deployment_runs_the_image_as_it_is_built() -> None:
    docs = {d["kind"]: d for d in documents()}
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == "rnnlm:latest" and c["args"] == image_cmd()
    serve = build_parser().parse_args(c["args"][1:])
    assert c["ports"][0]["containerPort"] == serve.port
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    # The image's unprivileged user (useradd --uid), and the models where the CMD looks.
    uid = re.search(r"useradd .*--uid (\d+)", " ".join(r for w, r in instructions() if w == "RUN"))
    assert uid and pod["securityContext"]["runAsUser"] == int(uid.group(1))
    assert {"name": "models", "mountPath": serve.models, "readOnly": True} in c["volumeMounts"]
    settings = docs["ConfigMap"]["data"]
    assert settings["RNNLM_MODELS_DIR"] == serve.models
    assert float(settings["RNNLM_WATCH_INTERVAL_S"]) > 0
    # Streams in flight get their shutdown grace before the pod is killed.
    assert pod["terminationGracePeriodSeconds"] > int(settings["RNNLM_SHUTDOWN_TIMEOUT_S"])
    assert (
        docs["Service"]["spec"]["selector"] == docs["Deployment"]["spec"]["selector"]["matchLabels"]
    )
