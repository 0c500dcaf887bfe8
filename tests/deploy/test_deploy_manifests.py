"""deploy/k8s: every overlay (with and without the optional components) renders with kustomize,
validates against the Kubernetes schemas, passes the policy checks below, and its ConfigMap
yields a configuration the real `backstop --check-config` accepts for every role."""

import copy
import os
import re
import subprocess

import pytest

from deploy_common import (BACKSTOP_BIN, DEPLOY, OVERLAYS, REPO, kustomize,
                           overlay_with_components, validate_schemas)

RENDERS = [("dev", ()), ("prod", ()), ("dev", ("monitoring",)),
           ("prod", ("monitoring", "proxy-protocol"))]
EXPECTED_VOTERS = {"dev": 3, "prod": 5}
# On every object; workloads and their pods also carry app.kubernetes.io/version and
# app.kubernetes.io/component.
RECOMMENDED_LABELS = ["app.kubernetes.io/name", "app.kubernetes.io/instance",
                      "app.kubernetes.io/part-of", "app.kubernetes.io/managed-by"]
WORKLOADS = {"StatefulSet", "Deployment"}
# The only labels an immutable field (a workload's selector, a volumeClaimTemplate) may carry:
# a changing one, such as the version, would make the next apply fail.
STABLE_LABELS = {"app.kubernetes.io/name", "app.kubernetes.io/component"}
# Cluster mTLS: every pod holds a node certificate; only the queue pods hold the admin client
# certificate (OU=backstop-admin), for the preStop hook's backstopctl.
CLUSTER_TLS_SECRET = "backstop-cluster-tls"
ADMIN_TLS_SECRET = "backstop-admin-tls"
ADMIN_WORKLOAD = "StatefulSet/backstop-queue"
BACKSTOPCTL_TLS_ENV = ("BACKSTOP_TLS_CA", "BACKSTOP_TLS_CERT", "BACKSTOP_TLS_KEY")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kustomize")
    return {(overlay, components): kustomize(overlay_with_components(tmp, overlay, list(components)))
            for overlay, components in RENDERS}


def by_kind(objects, kind):
    return [o for o in objects if o["kind"] == kind]


def one(objects, kind, name):
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def pod_spec(workload):
    return workload["spec"]["template"]["spec"]


def quantity(value):
    """CPU or memory quantity as a number, enough to compare requests with limits."""
    text = str(value)
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return float(text[:-len(suffix)]) * factor
    return float(text)


def secret_mounts(spec, container, secret):
    """The container's mounts of volumes backed by `secret`."""
    volumes = {v["name"] for v in spec.get("volumes", [])
               if v.get("secret", {}).get("secretName") == secret}
    return [m for m in container.get("volumeMounts", []) if m["name"] in volumes]


def tls_problems(name, spec):
    """Cluster mTLS rules for one workload's pods: the node certificate everywhere, read-only;
    the admin certificate, and backstopctl's BACKSTOP_TLS_* pointing at it, only in the queue."""
    problems = []
    admin_volumes = [v["name"] for v in spec.get("volumes", [])
                     if v.get("secret", {}).get("secretName") == ADMIN_TLS_SECRET]
    if name != ADMIN_WORKLOAD and admin_volumes:
        problems.append(f"{name}: holds the admin certificate ({ADMIN_TLS_SECRET})")
    for container in spec.get("containers", []):
        where = f"{name} container {container['name']}"
        cluster = secret_mounts(spec, container, CLUSTER_TLS_SECRET)
        admin = secret_mounts(spec, container, ADMIN_TLS_SECRET)
        if not cluster:
            problems.append(f"{where}: does not mount {CLUSTER_TLS_SECRET}")
        problems += [f"{where}: Secret volume {m['name']} mounted writable"
                     for m in cluster + admin if not m.get("readOnly")]
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        if name != ADMIN_WORKLOAD:
            if set(BACKSTOPCTL_TLS_ENV) & set(env):
                problems.append(f"{where}: sets backstopctl's BACKSTOP_TLS_* outside the queue")
            continue
        if not admin:
            problems.append(f"{where}: does not mount {ADMIN_TLS_SECRET} (preStop needs it)")
            continue
        expected = {"BACKSTOP_TLS_CA": f"{cluster[0]['mountPath']}/ca.crt" if cluster else None,
                    "BACKSTOP_TLS_CERT": f"{admin[0]['mountPath']}/tls.crt",
                    "BACKSTOP_TLS_KEY": f"{admin[0]['mountPath']}/tls.key"}
        problems += [f"{where}: {key} is {env.get(key)}, not {value}"
                     for key, value in expected.items() if env.get(key) != value]
    return problems


def policy_problems(objects):
    """Every rule the issue sets for the manifests; returns what breaks them."""
    problems = []
    services = {o["metadata"]["name"]: o for o in by_kind(objects, "Service")}
    pdbs = by_kind(objects, "PodDisruptionBudget")
    policies = by_kind(objects, "NetworkPolicy")
    for o in objects:
        name = f"{o['kind']}/{o['metadata']['name']}"
        labels = o["metadata"].get("labels", {})
        problems += [f"{name}: no label {label}" for label in RECOMMENDED_LABELS
                     if label not in labels]
    for workload in [o for o in objects if o["kind"] in WORKLOADS]:
        name = f"{workload['kind']}/{workload['metadata']['name']}"
        template = workload["spec"]["template"]
        pod_labels = template["metadata"]["labels"]
        spec = pod_spec(workload)
        for label in ("app.kubernetes.io/component", "app.kubernetes.io/version"):
            if label not in pod_labels or label not in workload["metadata"]["labels"]:
                problems.append(f"{name}: no {label} on it or its pods")
        immutable = dict(workload["spec"]["selector"]["matchLabels"])
        for claim in workload["spec"].get("volumeClaimTemplates", []):
            immutable.update(claim["metadata"].get("labels", {}))
        if set(immutable) - STABLE_LABELS:
            problems.append(f"{name}: selector or volumeClaimTemplate labelled with "
                            f"{sorted(set(immutable) - STABLE_LABELS)}")
        tags = {c["image"].rpartition(":")[2] for c in spec.get("containers", [])}
        if tags != {pod_labels.get("app.kubernetes.io/version")}:
            problems.append(f"{name}: app.kubernetes.io/version is not the image tag {tags}")
        annotations = template["metadata"].get("annotations", {})
        if annotations.get("prometheus.io/scrape") != "true" or "prometheus.io/port" not in annotations:
            problems.append(f"{name}: no Prometheus scrape annotations")
        if not [p for p in pdbs if matches(p["spec"]["selector"], pod_labels)]:
            problems.append(f"{name}: no PodDisruptionBudget")
        if not [p for p in policies if matches(p["spec"]["podSelector"], pod_labels)]:
            problems.append(f"{name}: no NetworkPolicy")
        if not spec.get("securityContext", {}).get("runAsNonRoot"):
            problems.append(f"{name}: pods may run as root")
        problems += tls_problems(name, spec)
        secret_volumes = {v["name"] for v in spec.get("volumes", []) if "secret" in v}
        for container in spec.get("containers", []) + spec.get("initContainers", []):
            where = f"{name} container {container['name']}"
            if ":latest" in container["image"] or ":" not in container["image"]:
                problems.append(f"{where}: image {container['image']} has no pinned tag")
            security = container.get("securityContext", {})
            if security.get("allowPrivilegeEscalation") is not False or \
                    not security.get("readOnlyRootFilesystem"):
                problems.append(f"{where}: privilege escalation or a writable root filesystem")
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if probe not in container:
                    problems.append(f"{where}: no {probe}")
            resources = container.get("resources", {})
            requests, limits = resources.get("requests", {}), resources.get("limits", {})
            for resource in ("cpu", "memory"):
                if resource not in requests or resource not in limits:
                    problems.append(f"{where}: no {resource} request and limit")
                elif quantity(requests[resource]) != quantity(limits[resource]):
                    problems.append(f"{where}: {resource} request != limit")
            for mount in container.get("volumeMounts", []):
                if mount["name"] in secret_volumes and "subPath" in mount:
                    problems.append(f"{where}: Secret volume {mount['name']} mounted with subPath")
    for pdb in pdbs:
        if pdb["kind"] == "PodDisruptionBudget" and pdb["spec"].get("maxUnavailable") != 1:
            problems.append(f"PodDisruptionBudget/{pdb['metadata']['name']}: maxUnavailable != 1")
    for service in services.values():
        if service["spec"].get("type") == "LoadBalancer" and \
                service["spec"].get("externalTrafficPolicy") != "Local":
            problems.append(f"Service/{service['metadata']['name']}: LoadBalancer without "
                            "externalTrafficPolicy: Local")
    for sts in by_kind(objects, "StatefulSet"):
        name = f"StatefulSet/{sts['metadata']['name']}"
        spec = sts["spec"]
        if spec.get("podManagementPolicy") != "Parallel":
            problems.append(f"{name}: podManagementPolicy is not Parallel")
        if not spec.get("volumeClaimTemplates"):
            problems.append(f"{name}: no volumeClaimTemplates")
        peers = services.get(spec.get("serviceName"))
        if peers is None or peers["spec"].get("clusterIP") != "None" or \
                not peers["spec"].get("publishNotReadyAddresses"):
            problems.append(f"{name}: serviceName is not a headless Service publishing "
                            "not-ready addresses")
        hard = pod_spec(sts).get("affinity", {}).get("podAntiAffinity", {}).get(
            "requiredDuringSchedulingIgnoredDuringExecution", [])
        pod_labels = spec["template"]["metadata"]["labels"]
        if not [t for t in hard if t["topologyKey"] == "kubernetes.io/hostname"
                and matches(t["labelSelector"], pod_labels)]:
            problems.append(f"{name}: no hard pod anti-affinity per node")
        for container in pod_spec(sts)["containers"]:
            if "preStop" not in container.get("lifecycle", {}):
                problems.append(f"{name}: container {container['name']} has no preStop hook")
    return problems


@pytest.mark.parametrize("overlay,components", RENDERS)
def test_overlay_validates_against_kubernetes_schemas(rendered, overlay, components):
    objects = rendered[(overlay, components)]
    assert validate_schemas(objects) == []


def test_schema_validation_rejects_a_broken_object(rendered):
    broken = copy.deepcopy(one(rendered[("dev", ())], "StatefulSet", "backstop-queue"))
    broken["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "grpc"
    problems = validate_schemas([broken, {"apiVersion": "example.net/v1", "kind": "Nope",
                                          "metadata": {"name": "x"}}])
    assert [p["object"] for p in problems] == ["StatefulSet/backstop-queue", "Nope/x"]
    assert "containerPort" in problems[0]["error"]


@pytest.mark.parametrize("overlay,components", RENDERS)
def test_overlay_passes_policy_checks(rendered, overlay, components):
    assert policy_problems(rendered[(overlay, components)]) == []


def test_policy_checks_catch_each_violation(rendered):
    objects = copy.deepcopy(rendered[("dev", ())])
    queue = one(objects, "StatefulSet", "backstop-queue")
    container = pod_spec(queue)["containers"][0]
    del container["livenessProbe"]
    container["resources"]["limits"]["memory"] = "4Gi"
    container["volumeMounts"].append({"name": "cluster-tls", "mountPath": "/x/ca.crt",
                                      "subPath": "ca.crt"})
    queue["spec"]["podManagementPolicy"] = "OrderedReady"
    del pod_spec(queue)["securityContext"]["runAsNonRoot"]
    container["securityContext"]["readOnlyRootFilesystem"] = False
    claim_labels = queue["spec"]["volumeClaimTemplates"][0]["metadata"]["labels"]
    claim_labels["app.kubernetes.io/version"] = "0.1.0"
    delivery = one(objects, "Deployment", "backstop-delivery")
    pod_spec(delivery)["containers"][0]["image"] = "registry.example.net/backstop:0.2.0"
    one(objects, "Service", "backstop-ingest")["spec"]["externalTrafficPolicy"] = "Cluster"
    objects.remove(one(objects, "PodDisruptionBudget", "backstop-queue"))
    # Admin rights on an ingest pod; the node certificate missing from delivery; the queue's
    # backstopctl pointed at the node certificate instead of the admin one.
    ingest = pod_spec(one(objects, "Deployment", "backstop-ingest"))
    ingest["volumes"].append({"name": "admin", "secret": {"secretName": "backstop-admin-tls"}})
    ingest["containers"][0]["env"].append({"name": "BACKSTOP_TLS_CERT", "value": "/x/tls.crt"})
    delivery_spec = pod_spec(delivery)
    delivery_spec["containers"][0]["volumeMounts"] = [
        m for m in delivery_spec["containers"][0]["volumeMounts"] if m["name"] != "cluster-tls"]
    for variable in container["env"]:
        if variable["name"] == "BACKSTOP_TLS_CERT":
            variable["value"] = "/etc/backstop/tls/cluster/tls.crt"
    problems = "\n".join(policy_problems(objects))
    for expected in ["no livenessProbe", "memory request != limit", "mounted with subPath",
                     "not Parallel", "without externalTrafficPolicy: Local",
                     "StatefulSet/backstop-queue: no PodDisruptionBudget",
                     "pods may run as root", "a writable root filesystem",
                     "volumeClaimTemplate labelled with ['app.kubernetes.io/version']",
                     "backstop-delivery: app.kubernetes.io/version is not the image tag",
                     "Deployment/backstop-ingest: holds the admin certificate",
                     "backstop-ingest container backstop: sets backstopctl's BACKSTOP_TLS_*",
                     "backstop-delivery container backstop: does not mount backstop-cluster-tls",
                     "BACKSTOP_TLS_CERT is /etc/backstop/tls/cluster/tls.crt, not "
                     "/etc/backstop/tls/admin/tls.crt"]:
        assert expected in problems


def test_policy_checks_want_the_admin_certificate_mounted_read_only_in_the_queue(rendered):
    objects = copy.deepcopy(rendered[("dev", ())])
    container = pod_spec(one(objects, "StatefulSet", "backstop-queue"))["containers"][0]
    admin = next(m for m in container["volumeMounts"] if m["name"] == "admin-tls")
    admin["readOnly"] = False
    assert "StatefulSet/backstop-queue container backstop: Secret volume admin-tls mounted " \
        "writable" in policy_problems(objects)
    container["volumeMounts"].remove(admin)
    assert "StatefulSet/backstop-queue container backstop: does not mount backstop-admin-tls " \
        "(preStop needs it)" in policy_problems(objects)


def test_cluster_tls_files_lie_in_the_mounted_secret(rendered):
    """The [cluster_tls] paths of the shared configuration name the files of the
    backstop-cluster-tls Secret where every workload mounts it."""
    objects = rendered[("prod", ())]
    config_map = next(c for c in by_kind(objects, "ConfigMap"))
    text = config_map["data"]["backstop.toml"]
    table = re.search(r"^\[cluster_tls\][^\n]*\n((?:\w+ = .*\n)+)", text, re.M)
    assert table, "no [cluster_tls] in backstop.toml"
    paths = dict(re.findall(r'^(\w+) = "([^"]+)"', table.group(1), re.M))
    for workload in [o for o in objects if o["kind"] in WORKLOADS]:
        spec = pod_spec(workload)
        mount = secret_mounts(spec, spec["containers"][0], CLUSTER_TLS_SECRET)[0]["mountPath"]
        assert paths == {"ca": f"{mount}/ca.crt", "cert": f"{mount}/tls.crt",
                         "key": f"{mount}/tls.key"}, workload["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_voter_count_follows_the_overlay(rendered, overlay):
    objects = rendered[(overlay, ())]
    voters = EXPECTED_VOTERS[overlay]
    assert one(objects, "StatefulSet", "backstop-queue")["spec"]["replicas"] == voters
    config = [c for c in by_kind(objects, "ConfigMap")
              if c["metadata"]["name"].startswith("backstop-config-")]
    assert len(config) == 1 and config[0]["data"]["voters"] == str(voters)


def test_ingest_autoscales_on_cpu_and_the_real_connection_metric(rendered):
    hpa = one(rendered[("prod", ())], "HorizontalPodAutoscaler", "backstop-ingest")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "backstop-ingest"
    metrics = hpa["spec"]["metrics"]
    assert {"cpu"} == {m["resource"]["name"] for m in metrics if m["type"] == "Resource"}
    custom = [m["pods"]["metric"]["name"] for m in metrics if m["type"] == "Pods"]
    assert custom == ["backstop_ingest_connections_active"]
    source = (REPO / "cmd/backstop/role_metrics.cc").read_text()
    assert f'"{custom[0]}"' in source


def test_ingest_grace_covers_the_drain(rendered):
    objects = rendered[("dev", ())]
    ingest = one(objects, "Deployment", "backstop-ingest")
    container = pod_spec(ingest)["containers"][0]
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    smtp = one(objects, "ConfigMap", next(c["metadata"]["name"] for c in by_kind(objects, "ConfigMap")
                                        if c["metadata"]["name"].startswith("backstop-config-")))
    commit_timeout = int(re.search(r'commit_timeout = "(\d+)s"', smtp["data"]["smtp.toml"]).group(1))
    # preStop sleep + the drain window (commit_timeout + 5s, cmd/backstop/main.cc) + margin.
    assert pod_spec(ingest)["terminationGracePeriodSeconds"] >= \
        int(pre_stop[-1]) + commit_timeout + 5 + 10


def test_proxy_protocol_variant_enables_proxy_headers(rendered):
    objects = rendered[("prod", ("monitoring", "proxy-protocol"))]
    service = one(objects, "Service", "backstop-ingest")
    assert "service.beta.kubernetes.io/aws-load-balancer-proxy-protocol" in \
        service["metadata"]["annotations"]
    assert service["spec"]["externalTrafficPolicy"] == "Local"
    config = next(c for c in by_kind(objects, "ConfigMap"))
    assert "proxy_protocol = true" in config["data"]["smtp.toml"]
    plain = next(c for c in by_kind(rendered[("prod", ())], "ConfigMap"))
    assert "proxy_protocol" not in plain["data"]["smtp.toml"]


def render_node_config(tmp_path, config_map, role, pod_name, voters, pod_ip="10.244.3.17"):
    conf = tmp_path / "conf"
    conf.mkdir(exist_ok=True)
    for key, value in config_map["data"].items():
        conf.joinpath(key).write_text(value)
    out = tmp_path / f"{pod_name}-{role}.toml"
    env = dict(os.environ, BACKSTOP_ROLE=role, BACKSTOP_VOTERS=str(voters),
               BACKSTOP_HOSTNAME=config_map["data"]["hostname"], POD_NAME=pod_name,
               POD_IP=pod_ip, POD_NAMESPACE="backstop", BACKSTOP_CONFIG_DIR=str(conf),
               BACKSTOP_RUNTIME_CONFIG=str(out))
    result = subprocess.run(["sh", str(DEPLOY / "docker-entrypoint.sh"), "render"], env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return out


def check_config(path):
    result = subprocess.run([BACKSTOP_BIN, "--check-config", str(path)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.parametrize("overlay,components", RENDERS)
def test_every_role_gets_a_configuration_backstop_accepts(rendered, tmp_path, overlay,
                                                          components):
    objects = rendered[(overlay, components)]
    config_map = next(c for c in by_kind(objects, "ConfigMap"))
    voters = int(config_map["data"]["voters"])
    namespace = one(objects, "StatefulSet", "backstop-queue")["metadata"]["namespace"]
    last = voters - 1
    summary = check_config(render_node_config(tmp_path, config_map, "queue",
                                              f"backstop-queue-{last}", voters))
    assert f"node {voters} " in summary
    assert summary.count(f".backstop-queue-peers.backstop.svc.cluster.local:7025") == voters
    assert namespace in ("backstop", "backstop-dev")
    for role in ("ingest", "delivery"):
        summary = check_config(render_node_config(tmp_path, config_map, role,
                                                  f"backstop-{role}-7d9f-x2", voters))
        assert "node 66321 " in summary  # 65536 + 3 * 256 + 17
        assert "queue endpoints: backstop-queue-0." in summary


def test_a_queue_pod_beyond_the_initial_voters_starts_to_join(rendered, tmp_path):
    config_map = next(c for c in by_kind(rendered[("dev", ())], "ConfigMap"))
    path = render_node_config(tmp_path, config_map, "queue", "backstop-queue-3", 3)
    text = path.read_text()
    assert "id = 4\n" in text and "join = true" in text
    check_config(path)
    first = render_node_config(tmp_path, config_map, "queue", "backstop-queue-0", 3).read_text()
    assert "id = 1\n" in first and "join = false" in first


def test_entrypoint_refuses_a_pod_name_without_an_ordinal(rendered, tmp_path):
    config_map = next(c for c in by_kind(rendered[("dev", ())], "ConfigMap"))
    with pytest.raises(AssertionError, match="does not end in a StatefulSet ordinal"):
        render_node_config(tmp_path, config_map, "queue", "backstop-queue", 3)
