"""Every manifest under deploy/k8s/ (keda/ included) checked by a real schema validator:
``kubernetes-validate`` (the Kubernetes OpenAPI schemas, strict: an unknown field fails) for the
core objects, ``cloudcoil-models-keda`` (models generated from KEDA's CRD OpenAPI schema, KEDA
2.16) for KEDA's; a field that schema does not know fails as well."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pydantic
import pytest
import yaml

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
VERSION = "1.30.0"  #: the Kubernetes the manifests are checked against
KEDA = "keda.sh/v1alpha1"


def manifests() -> list[tuple[str, dict[str, Any]]]:
    """(file and object, object) of every YAML document under deploy/k8s/."""
    return [
        (f"{path.relative_to(K8S)}: {doc['kind']}/{doc['metadata']['name']}", doc)
        for path in sorted(K8S.rglob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def check_keda(doc: dict[str, Any]) -> None:
    """Validate a KEDA object (strict types), and fail on any field its schema does not know."""
    from cloudcoil.models.keda import v1alpha1

    model = getattr(v1alpha1, doc["kind"])
    dumped = model.model_validate(doc, strict=True).model_dump(
        by_alias=True, exclude_unset=True, mode="json"
    )
    unknown = unknown_fields(doc, dumped)
    assert not unknown, f"fields the KEDA schema does not know: {unknown}"


def unknown_fields(given: Any, kept: Any, at: str = "") -> list[str]:
    """Paths of the fields in ``given`` that validation dropped from ``kept``."""
    if isinstance(given, dict) and isinstance(kept, dict):
        return [
            path
            for key, value in given.items()
            for path in (
                unknown_fields(value, kept[key], f"{at}.{key}") if key in kept else [f"{at}.{key}"]
            )
        ]
    if isinstance(given, list) and isinstance(kept, list):
        return [
            p
            for i, (g, k) in enumerate(zip(given, kept, strict=True))
            for p in unknown_fields(g, k, f"{at}[{i}]")
        ]
    return []


def check(doc: dict[str, Any]) -> None:
    if doc["apiVersion"] == KEDA:
        check_keda(doc)
    else:
        kubernetes_validate.validate(doc, VERSION, strict=True)


@pytest.mark.parametrize(("where", "doc"), manifests(), ids=[w for w, _ in manifests()])
def test_each_manifest_is_valid_against_its_schema(where: str, doc: dict[str, Any]) -> None:
    check(doc)


def test_the_manifests_include_the_keda_scaled_object_and_the_core_deployments() -> None:
    kinds = {(doc["apiVersion"], doc["kind"]) for _, doc in manifests()}
    assert (KEDA, "ScaledObject") in kinds and ("apps/v1", "Deployment") in kinds


def _doc(kind: str) -> dict[str, Any]:
    return copy.deepcopy(next(doc for _, doc in manifests() if doc["kind"] == kind))


def test_the_validators_reject_an_unknown_field_and_a_wrong_type() -> None:
    deployment = _doc("Deployment")
    deployment["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 30  # a typo
    with pytest.raises(kubernetes_validate.ValidationError, match="was unexpected"):
        check(deployment)
    deployment = _doc("Deployment")
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError, match="not of type"):
        check(deployment)
    scaled = _doc("ScaledObject")
    scaled["spec"]["maxReplicas"] = 8  # KEDA calls it maxReplicaCount
    with pytest.raises(AssertionError, match=r"\.spec\.maxReplicas"):
        check(scaled)
    scaled = _doc("ScaledObject")
    scaled["spec"]["minReplicaCount"] = "0"  # a string where the schema has an integer
    with pytest.raises(pydantic.ValidationError, match="minReplicaCount"):
        check(scaled)
    scaled = _doc("ScaledObject")
    del scaled["spec"]["triggers"]
    with pytest.raises(pydantic.ValidationError, match="triggers"):
        check(scaled)
