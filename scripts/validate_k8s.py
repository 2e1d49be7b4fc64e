"""Validates the Kubernetes manifests in deploy/k8s (scripts/validate-k8s runs it).

Core kinds go through kubernetes-validate (PyPI) against the Kubernetes schemas it ships,
strictly (an unknown field fails); SpinApp, ScaledObject and ServiceMonitor through
jsonschema against the published CRD schemas committed in deploy/k8s/crds/. The
kustomization must list every manifest. Then each check must also fail on a broken
copy, so a validator that passes everything is caught.
"""

import copy
import glob
import os
import sys

import jsonschema
import kubernetes_validate
import yaml

KUBERNETES = "1.33.0"


def strict(schema):
    """An unknown field fails, as kubernetes-validate's strict mode (the API server would
    prune it silently): objects with listed properties allow no others."""
    if isinstance(schema, dict):
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        for value in schema.values():
            strict(value)
    elif isinstance(schema, list):
        for value in schema:
            strict(value)
    return schema


def crd_schemas(folder):
    schemas = {}
    for path in glob.glob(os.path.join(folder, "*.yaml")):
        crd = yaml.safe_load(open(path))
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schemas[(f"{group}/{version['name']}", kind)] = strict(version["schema"]["openAPIV3Schema"])
    return schemas


def check(doc, schemas):
    """Raises on an invalid manifest."""
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key in schemas:
        # The CRD schemas leave metadata to the API server: check it is an object with a name.
        if not isinstance(doc.get("metadata"), dict) or not doc["metadata"].get("name"):
            raise ValueError("metadata.name is required")
        jsonschema.validate(doc, schemas[key])
    elif "/" in (doc.get("apiVersion") or "") and doc["apiVersion"].split("/")[0].count(".") and \
            not doc["apiVersion"].startswith(("apps/", "policy/", "batch/", "networking.k8s.io/", "autoscaling/")):
        raise ValueError(f"no schema for {key}: add its CRD to deploy/k8s/crds/")
    else:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def main(root):
    schemas = crd_schemas(os.path.join(root, "crds"))
    kustomization = yaml.safe_load(open(os.path.join(root, "kustomization.yaml")))
    listed = set(kustomization["resources"])
    docs = []
    for path in sorted(glob.glob(os.path.join(root, "*.yaml"))):
        name = os.path.basename(path)
        if name == "kustomization.yaml":
            continue
        if name not in listed:
            sys.exit(f"{name} is not in kustomization.yaml's resources")
        for doc in yaml.safe_load_all(open(path)):
            try:
                check(doc, schemas)
            except Exception as e:  # noqa: BLE001 (every failure is reported the same way)
                sys.exit(f"{name}: {doc.get('kind')} {doc.get('metadata', {}).get('name')}: {e}")
            docs.append((name, doc))
            print(f"ok {name}: {doc['kind']} {doc['metadata']['name']}")
    kinds = {d["kind"] for _, d in docs}
    for needed in ["SpinApp", "Deployment", "Service", "PodDisruptionBudget", "ServiceMonitor", "ScaledObject"]:
        if needed not in kinds:
            sys.exit(f"no {needed} in deploy/k8s")
    # The checks must catch a mistake in each kind.
    for name, doc in docs:
        broken = copy.deepcopy(doc)
        broken.setdefault("spec", {})["notAField"] = 1
        if doc["kind"] == "SpinApp":
            del broken["spec"]["executor"]
        if doc["kind"] == "ScaledObject":
            del broken["spec"]["scaleTargetRef"]
        if doc["kind"] == "ServiceMonitor":
            broken["spec"]["endpoints"] = "http"
        if doc["kind"] == "Namespace":
            broken["metadata"]["name"] = 7
        try:
            check(broken, schemas)
        except Exception:  # noqa: BLE001
            continue
        sys.exit(f"{name}: a broken {doc['kind']} passed: the validator checks nothing")
    print(f"{len(docs)} manifests valid (Kubernetes {KUBERNETES}, CRDs from deploy/k8s/crds)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "deploy/k8s")
