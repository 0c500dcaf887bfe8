"""Writes deploy/k8s/components/monitoring/prometheusrule.yaml from deploy/prometheus/alerts.yml,
so that the Prometheus Operator gets the same rules as a plain Prometheus. --check compares
instead of writing (exit 1 when they differ)."""

import pathlib
import sys

import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
ALERTS = REPO / "deploy/prometheus/alerts.yml"
RULE = REPO / "deploy/k8s/components/monitoring/prometheusrule.yaml"
HEADER = ("# Generated from deploy/prometheus/alerts.yml by tests/deploy/gen_prometheusrule.py;\n"
          "# edit that file and rerun the script (make test fails while the two differ).\n")


class _Dumper(yaml.SafeDumper):
    pass


def _string(dumper, value):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _string)


def render():
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    doc = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
           "metadata": {"name": "backstop",
                        "labels": {"app.kubernetes.io/component": "metrics"}},
           "spec": {"groups": groups}}
    return HEADER + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=100)


def main():
    text = render()
    if "--check" in sys.argv[1:]:
        if RULE.read_text() != text:
            print(f"{RULE} is stale: run python3 {pathlib.Path(__file__).relative_to(REPO)}")
            return 1
        return 0
    RULE.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
