"""deploy/ validated offline (no cluster runs here).

kubeconform and the upstream Kubernetes/KubeRay JSON schemas are not available
offline, so every object is checked against a minimal *structural* JSON schema
written here (required fields and types of the parts we use), plus
cross-references: Service selectors and target ports match a workload, every
ConfigMap/Secret/PVC/volume referenced exists, every CITYBRAIN_ variable is a
field of cloud.core.config.Settings, every `citybrain <cmd>` is a real CLI
command, the RayService applications import and their args validate, the
Mosquitto files the broker config names are mounted, and the compose file's
services, volumes and mounted files exist. When `kubectl` is on PATH the
kustomization is also rendered with `kubectl kustomize`."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from cloud.core.config import Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S, KUBERAY, COMPOSE = DEPLOY / "k8s", DEPLOY / "kuberay", DEPLOY / "compose"
IMAGE = "ghcr.io/citybrain/citybrain"
DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
SETTINGS_ENV = {f"CITYBRAIN_{name.upper()}" for name in Settings.model_fields}

# --- minimal structural schemas ---------------------------------------------------

_STR = {"type": "string", "minLength": 1}
_LABELS = {"type": "object", "minProperties": 1, "additionalProperties": {"type": "string"}}
_META = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string", "pattern": DNS1123.pattern}, "labels": _LABELS},
}
_PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
_CONTAINER = {
    "type": "object",
    "required": ["name", "image"],
    "properties": {
        "name": _STR,
        "image": {"type": "string", "pattern": r"^[^:\s]+:[^:\s]+$"},  # tag always pinned
        "command": {"type": "array", "items": {"type": "string"}},
        "args": {"type": "array", "items": {"type": "string"}},
        "ports": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["containerPort"],
                "properties": {"containerPort": _PORT, "name": {"type": "string", "maxLength": 15}},
            },
        },
        "env": {
            "type": "array",
            "items": {"type": "object", "required": ["name"], "properties": {"name": _STR}},
        },
        "envFrom": {"type": "array"},
        "volumeMounts": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "mountPath"],
                "properties": {"mountPath": {"type": "string", "pattern": "^/"}},
            },
        },
        "resources": {"type": "object"},
    },
}
_POD_TEMPLATE = {
    "type": "object",
    "required": ["metadata", "spec"],
    "properties": {
        "metadata": {"type": "object", "required": ["labels"], "properties": {"labels": _LABELS}},
        "spec": {
            "type": "object",
            "required": ["containers"],
            "properties": {
                "containers": {"type": "array", "minItems": 1, "items": _CONTAINER},
                "volumes": {
                    "type": "array",
                    "items": {"type": "object", "required": ["name"], "minProperties": 2},
                },
            },
        },
    },
}
_WORKLOAD_SPEC = {
    "type": "object",
    "required": ["selector", "template"],
    "properties": {
        "replicas": {"type": "integer", "minimum": 0},
        "selector": {
            "type": "object",
            "required": ["matchLabels"],
            "properties": {"matchLabels": _LABELS},
        },
        "template": _POD_TEMPLATE,
    },
}
_RAY_CLUSTER_SPEC = {
    "type": "object",
    "required": ["headGroupSpec"],
    "properties": {
        "rayVersion": _STR,
        "headGroupSpec": {
            "type": "object",
            "required": ["rayStartParams", "template"],
            "properties": {"rayStartParams": {"type": "object"}, "template": _POD_TEMPLATE},
        },
        "workerGroupSpecs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["groupName", "rayStartParams", "template"],
                "properties": {
                    "groupName": _STR,
                    "replicas": {"type": "integer", "minimum": 0},
                    "minReplicas": {"type": "integer", "minimum": 0},
                    "maxReplicas": {"type": "integer", "minimum": 1},
                    "template": _POD_TEMPLATE,
                },
            },
        },
    },
}


def _kind(api: str, kind: str, spec: dict[str, Any] | None, **top: Any) -> dict[str, Any]:
    props: dict[str, Any] = {
        "apiVersion": {"const": api},
        "kind": {"const": kind},
        "metadata": _META,
        **top,
    }
    required = ["apiVersion", "kind", "metadata"]
    if spec is not None:
        props["spec"] = spec
        required.append("spec")
    return {"type": "object", "required": required, "properties": props}


SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("v1", "Namespace"): _kind("v1", "Namespace", None),
    ("v1", "ConfigMap"): _kind(
        "v1", "ConfigMap", None, data={"type": "object", "additionalProperties": {"type": "string"}}
    ),
    ("v1", "Secret"): _kind(
        "v1",
        "Secret",
        None,
        type={"type": "string"},
        stringData={"type": "object", "additionalProperties": {"type": "string"}},
    ),
    ("v1", "Service"): _kind(
        "v1",
        "Service",
        {
            "type": "object",
            "required": ["selector", "ports"],
            "properties": {
                "selector": _LABELS,
                "ports": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["port"],
                        "properties": {"port": _PORT, "name": _STR},
                    },
                },
            },
        },
    ),
    ("v1", "PersistentVolumeClaim"): _kind(
        "v1",
        "PersistentVolumeClaim",
        {
            "type": "object",
            "required": ["accessModes", "resources"],
            "properties": {
                "accessModes": {
                    "type": "array",
                    "minItems": 1,
                    "items": {"enum": ["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany"]},
                },
                "resources": {
                    "type": "object",
                    "required": ["requests"],
                    "properties": {
                        "requests": {"type": "object", "required": ["storage"]},
                    },
                },
            },
        },
    ),
    ("apps/v1", "Deployment"): _kind("apps/v1", "Deployment", _WORKLOAD_SPEC),
    ("apps/v1", "StatefulSet"): _kind(
        "apps/v1",
        "StatefulSet",
        {
            **_WORKLOAD_SPEC,
            "required": ["selector", "template", "serviceName"],
            "properties": {**_WORKLOAD_SPEC["properties"], "serviceName": _STR},
        },
    ),
    ("ray.io/v1", "RayCluster"): _kind("ray.io/v1", "RayCluster", _RAY_CLUSTER_SPEC),
    ("ray.io/v1", "RayService"): _kind(
        "ray.io/v1",
        "RayService",
        {
            "type": "object",
            "required": ["serveConfigV2", "rayClusterConfig"],
            "properties": {"serveConfigV2": _STR, "rayClusterConfig": _RAY_CLUSTER_SPEC},
        },
    ),
}

# --- loading ------------------------------------------------------------------------


def _docs(folder: Path) -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for f in sorted(folder.glob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            if doc is not None:
                out.append((f, doc))
    return out


@pytest.fixture(scope="module")
def objects() -> list[tuple[Path, dict[str, Any]]]:
    objs = [(f, d) for f, d in _docs(K8S) if d.get("kind") != "Kustomization"]
    return objs + _docs(KUBERAY)


def _find(objects: list[tuple[Path, dict[str, Any]]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, d in objects if d["kind"] == kind}


def _pod_templates(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    kind, spec = doc["kind"], doc.get("spec", {})
    if kind in ("Deployment", "StatefulSet"):
        yield spec["template"]
    elif kind in ("RayCluster", "RayService"):
        cluster = spec if kind == "RayCluster" else spec["rayClusterConfig"]
        yield cluster["headGroupSpec"]["template"]
        for g in cluster.get("workerGroupSpecs", []):
            yield g["template"]


def _containers(
    objects: list[tuple[Path, dict[str, Any]]],
) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for _, doc in objects:
        for tpl in _pod_templates(doc):
            for c in tpl["spec"]["containers"]:
                yield doc["metadata"]["name"], tpl, c


def _kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


# --- tests --------------------------------------------------------------------------


def test_every_manifest_parses_and_matches_its_structural_schema(
    objects: list[tuple[Path, dict[str, Any]]],
) -> None:
    assert objects, "no manifests found"
    kinds = set()
    for f, doc in objects:
        key = (doc.get("apiVersion"), doc.get("kind"))
        assert key in SCHEMAS, f"{f.name}: unexpected apiVersion/kind {key}"
        try:
            jsonschema.validate(doc, SCHEMAS[key])
        except jsonschema.ValidationError as e:
            pytest.fail(
                f"{f.name} {doc['kind']}/{doc['metadata'].get('name')}: {e.message} "
                f"at {'/'.join(map(str, e.absolute_path))}"
            )
        if f.parent == K8S or f.parent == KUBERAY:
            assert doc["kind"] == "Namespace" or doc["metadata"].get("namespace") == "citybrain", (
                f"{f.name}: {doc['kind']} outside namespace citybrain"
            )
        kinds.add(doc["kind"])
    assert {
        "Deployment",
        "StatefulSet",
        "Service",
        "ConfigMap",
        "Secret",
        "PersistentVolumeClaim",
        "RayCluster",
        "RayService",
    } <= kinds
    names = [(d["kind"], d["metadata"]["name"]) for _, d in objects]
    assert len(names) == len(set(names)), "duplicate object names"


def test_the_schema_check_catches_broken_objects(
    objects: list[tuple[Path, dict[str, Any]]],
) -> None:
    """The hand-written schemas are not vacuous."""
    import copy

    dep = copy.deepcopy(next(d for _, d in objects if d["kind"] == "Deployment"))
    del dep["spec"]["selector"]
    with pytest.raises(jsonschema.ValidationError, match="selector"):
        jsonschema.validate(dep, SCHEMAS[("apps/v1", "Deployment")])
    dep = copy.deepcopy(next(d for _, d in objects if d["kind"] == "Deployment"))
    dep["spec"]["template"]["spec"]["containers"][0]["image"] = "ghcr.io/citybrain/citybrain"
    with pytest.raises(jsonschema.ValidationError, match="does not match"):
        jsonschema.validate(dep, SCHEMAS[("apps/v1", "Deployment")])
    svc = copy.deepcopy(next(d for _, d in objects if d["kind"] == "Service"))
    svc["spec"]["ports"][0]["port"] = 70000
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(svc, SCHEMAS[("v1", "Service")])


def test_the_kustomization_lists_every_file_and_renders(tmp_path: Path) -> None:
    k = _kustomization()
    assert k["apiVersion"] == "kustomize.config.k8s.io/v1beta1" and k["kind"] == "Kustomization"
    files = {f.name for f in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(k["resources"]) == files
    for gen in k.get("configMapGenerator", []):
        for entry in gen["files"]:
            src = entry.split("=", 1)[-1]
            assert (K8S / src).is_file(), f"configMapGenerator {gen['name']}: {src} missing"
    if shutil.which("kubectl") is None:
        return  # the structural checks above still ran
    r = subprocess.run(
        ["kubectl", "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(K8S)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    rendered = [d for d in yaml.safe_load_all(r.stdout) if d]
    cm = next(
        d
        for d in rendered
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "citybrain-mosquitto"
    )
    assert cm["data"]["mosquitto.conf"] == (DEPLOY / "mosquitto" / "mosquitto.conf").read_text()
    assert cm["data"]["acl"] == (DEPLOY / "mosquitto" / "acl").read_text()
    assert all(d["metadata"].get("namespace", "citybrain") == "citybrain" for d in rendered)


def test_workload_selectors_and_services_are_consistent(
    objects: list[tuple[Path, dict[str, Any]]],
) -> None:
    workloads = [d for _, d in objects if d["kind"] in ("Deployment", "StatefulSet")]
    services = _find(objects, "Service")
    for w in workloads:
        sel = w["spec"]["selector"]["matchLabels"]
        labels = w["spec"]["template"]["metadata"]["labels"]
        assert sel.items() <= labels.items(), (
            f"{w['metadata']['name']}: selector does not match pod labels"
        )
        if w["kind"] == "StatefulSet":
            assert w["spec"]["serviceName"] in services, (
                f"{w['metadata']['name']}: no governing Service"
            )
    for name, svc in services.items():
        sel = svc["spec"]["selector"]
        matched = [
            w
            for w in workloads
            if sel.items() <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert matched, f"Service {name} selects no workload"
        ports = {
            p.get("name"): p["containerPort"]
            for w in matched
            for c in w["spec"]["template"]["spec"]["containers"]
            for p in c.get("ports", [])
        }
        for p in svc["spec"]["ports"]:
            target = p.get("targetPort", p["port"])
            if isinstance(target, str):
                assert target in ports, (
                    f"Service {name}: targetPort {target!r} not a container port name"
                )
            else:
                assert target in ports.values(), f"Service {name}: targetPort {target} not exposed"


def test_references_to_configmaps_secrets_volumes_and_claims_exist(
    objects: list[tuple[Path, dict[str, Any]]],
) -> None:
    configmaps = {n: d.get("data", {}) for n, d in _find(objects, "ConfigMap").items()}
    configmaps.update(
        {
            g["name"]: {e.split("=", 1)[0]: "" for e in g["files"]}
            for g in _kustomization().get("configMapGenerator", [])
        }
    )
    secrets = {
        n: d.get("stringData", {}) | d.get("data", {}) for n, d in _find(objects, "Secret").items()
    }
    claims = set(_find(objects, "PersistentVolumeClaim"))
    for owner, tpl, c in _containers(objects):
        where = f"{owner}/{c['name']}"
        for ef in c.get("envFrom", []):
            if "configMapRef" in ef:
                assert ef["configMapRef"]["name"] in configmaps, where
            if "secretRef" in ef:
                assert ef["secretRef"]["name"] in secrets, where
        for e in c.get("env", []):
            ref = e.get("valueFrom", {})
            if "secretKeyRef" in ref:
                assert ref["secretKeyRef"]["key"] in secrets[ref["secretKeyRef"]["name"]], where
            if "configMapKeyRef" in ref:
                assert (
                    ref["configMapKeyRef"]["key"] in configmaps[ref["configMapKeyRef"]["name"]]
                ), where
        vols = {v["name"]: v for v in tpl["spec"].get("volumes", [])}
        owner_doc = next(d for _, d in objects if d["metadata"]["name"] == owner)
        templates = {
            t["metadata"]["name"] for t in owner_doc["spec"].get("volumeClaimTemplates", [])
        }
        for m in c.get("volumeMounts", []):
            assert m["name"] in vols or m["name"] in templates, (
                f"{where}: mount {m['name']} has no volume"
            )
        for v in vols.values():
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in claims, where
            if "configMap" in v:
                assert v["configMap"]["name"] in configmaps, where
            if "secret" in v:
                sec = v["secret"]["secretName"]
                assert sec in secrets, where
                for item in v["secret"].get("items", []):
                    assert item["key"] in secrets[sec], f"{where}: {sec} has no key {item['key']}"
            if "subPath" in str(c.get("volumeMounts")):
                for m in c["volumeMounts"]:
                    if "subPath" in m and "configMap" in vols.get(m["name"], {}):
                        assert m["subPath"] in configmaps[vols[m["name"]]["configMap"]["name"]], (
                            where
                        )
                    if "subPath" in m and "secret" in vols.get(m["name"], {}):
                        assert m["subPath"] in secrets[vols[m["name"]]["secret"]["secretName"]], (
                            where
                        )


def _citybrain_env_names(objects: list[tuple[Path, dict[str, Any]]]) -> set[str]:
    names = set()
    for _, d in objects:
        if d["kind"] == "ConfigMap":
            names |= set(d.get("data", {}))
        if d["kind"] == "Secret":
            names |= set(d.get("stringData", {})) | set(d.get("data", {}))
    for _, _, c in _containers(objects):
        names |= {e["name"] for e in c.get("env", [])}
    return {n for n in names if n.startswith("CITYBRAIN_")}


def test_every_citybrain_variable_is_a_settings_field(
    objects: list[tuple[Path, dict[str, Any]]],
) -> None:
    names = _citybrain_env_names(objects)
    assert names, "no CITYBRAIN_ variables found"
    unknown = sorted(names - SETTINGS_ENV)
    assert not unknown, f"not fields of cloud.core.config.Settings: {unknown}"
    # the ConfigMap + Secret together configure what a cloud process needs
    assert {
        "CITYBRAIN_DATA_DIR",
        "CITYBRAIN_DB_URL",
        "CITYBRAIN_REDIS_URL",
        "CITYBRAIN_MQTT_URL",
    } <= names
    # and they parse: Settings accepts the ConfigMap's values
    cm = _find(objects, "ConfigMap")["citybrain-config"]["data"]
    s = Settings(**{k.removeprefix("CITYBRAIN_").lower(): v for k, v in cm.items()})
    assert s.api_port == 8000 and str(s.data_dir) == "/data"


def test_containers_run_real_cli_commands_with_one_image(
    objects: list[tuple[Path, dict[str, Any]]],
) -> None:
    import typer.main

    from cloud.cli import build_app

    commands = set(typer.main.get_command(build_app()).commands)
    ours = [(o, c) for o, _, c in _containers(objects) if c["image"].startswith(IMAGE + ":")]
    assert {o for o, _ in ours} >= {
        "citybrain-api",
        "citybrain-worker",
        "citybrain-ingest",
        "citybrain-flywheel",
        "citybrain-serving",
        "citybrain-planner",
        "citybrain-chunks",
        "citybrain-fleet",
    }
    assert len({c["image"] for _, c in ours}) == 1, "cloud containers use different images"
    for owner, c in ours:
        cmd = c.get("command")
        if cmd:  # Ray pods use KubeRay's own `ray start`
            assert cmd[0] == "citybrain" and cmd[1] in commands, f"{owner}: unknown command {cmd}"
    for _, _, c in _containers(objects):
        assert not c["image"].endswith(":latest"), f"{c['name']}: pin the image tag"
    api = _find(objects, "Deployment")["citybrain-api"]["spec"]["template"]["spec"]["containers"][0]
    assert api["readinessProbe"]["httpGet"]["path"] == "/api/v1/health"
    cm = _find(objects, "ConfigMap")["citybrain-config"]["data"]
    assert {p["containerPort"] for p in api["ports"]} == {int(cm["CITYBRAIN_API_PORT"])}


def test_mosquitto_mounts_what_its_config_names(objects: list[tuple[Path, dict[str, Any]]]) -> None:
    conf = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text()
    wanted = {}
    for line in conf.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in ("password_file", "acl_file", "persistence_location"):
            wanted[parts[0]] = parts[1].rstrip("/")
    assert set(wanted) == {"password_file", "acl_file", "persistence_location"}
    sts = _find(objects, "StatefulSet")["citybrain-mosquitto"]
    c = sts["spec"]["template"]["spec"]["containers"][0]
    mounts = {m["mountPath"].rstrip("/") for m in c["volumeMounts"]}
    for key, path in wanted.items():
        assert path in mounts, f"mosquitto.conf {key} {path} is not mounted"
    conf_path = c["command"][c["command"].index("-c") + 1]
    assert conf_path in mounts
    listen = [int(x.split()[1]) for x in conf.splitlines() if x.startswith("listener ")]
    assert {p["containerPort"] for p in c["ports"]} <= set(listen)
    # cloud services authenticate as the ACL's citybrain-cloud user
    secret = _find(objects, "Secret")["citybrain-secrets"]["stringData"]
    assert secret["CITYBRAIN_MQTT_URL"].startswith("mqtt://citybrain-cloud:")
    assert "user citybrain-cloud" in (DEPLOY / "mosquitto" / "acl").read_text()


def test_rayservice_applications_import_and_validate(
    objects: list[tuple[Path, dict[str, Any]]],
) -> None:
    import importlib

    from cloud.serving import AppArgs

    rs = _find(objects, "RayService")["citybrain-serving"]
    conf = yaml.safe_load(rs["spec"]["serveConfigV2"])
    apps = conf["applications"]
    assert apps
    for app in apps:
        assert {"name", "import_path", "route_prefix"} <= set(app)
        module, attr = app["import_path"].split(":")
        assert callable(getattr(importlib.import_module(module), attr))
        args = AppArgs.model_validate(app["args"])
        # paths the app reads are mounted in every Ray pod
        for tpl in _pod_templates(rs):
            mounts = {
                m["mountPath"] for c in tpl["spec"]["containers"] for m in c.get("volumeMounts", [])
            }
            for p in (args.store_dir, args.public_key_file):
                assert p is not None and any(p.startswith(m + "/") for m in mounts), p
    prefixes = [a["route_prefix"] for a in apps]
    assert len(prefixes) == len(set(prefixes))
    # the workers reach the flywheel cluster's head service
    rc = _find(objects, "RayCluster")["citybrain-flywheel"]
    worker = _find(objects, "Deployment")["citybrain-worker"]["spec"]["template"]["spec"][
        "containers"
    ][0]
    ray_address = next(e["value"] for e in worker["env"] if e["name"] == "RAY_ADDRESS")
    assert ray_address == f"ray://{rc['metadata']['name']}-head-svc:10001"
    head_ports = {
        p["containerPort"]
        for p in rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]
    }
    assert 10001 in head_ports


def test_compose_file_is_consistent() -> None:
    doc = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    services = doc["services"]
    assert set(services) == {
        "api", "worker", "ingest", "planner", "chunks", "fleet", "redis", "mosquitto", "postgres"
    }  # fmt: skip
    import typer.main

    from cloud.cli import build_app

    commands = set(typer.main.get_command(build_app()).commands)
    declared = set(doc.get("volumes", {}))
    for name, svc in services.items():
        assert "image" in svc, name
        assert not svc["image"].endswith(":latest"), name
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown {dep}"
        for v in svc.get("volumes", []):
            src = v.split(":", 1)[0]
            if src.startswith((".", "/")):
                path = (COMPOSE / src).resolve()
                if path.name != "mosquitto.passwd":  # made by the operator (deploy/README.md)
                    assert path.exists(), f"{name}: {src} missing"
            else:
                assert src in declared, f"{name}: volume {src} not declared"
        env = svc.get("environment", {})
        unknown = sorted(k for k in env if k.startswith("CITYBRAIN_") and k not in SETTINGS_ENV)
        assert not unknown, f"{name}: {unknown}"
        cmd = svc.get("command")
        if svc["image"].startswith(IMAGE):
            assert cmd[0] == "citybrain" and cmd[1] in commands, f"{name}: {cmd}"
            assert (COMPOSE / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()
    assert services["api"]["environment"]["CITYBRAIN_REDIS_URL"].startswith("redis://redis:")
    mosq = services["mosquitto"]["command"]
    mounted = {v.split(":")[1] for v in services["mosquitto"]["volumes"]}
    assert mosq[mosq.index("-c") + 1] in mounted
    example = (COMPOSE / ".env.example").read_text()
    for var in set(re.findall(r"\$\{([A-Z_]+):\?", (COMPOSE / "docker-compose.yml").read_text())):
        assert f"{var}=" in example, f".env.example lacks {var}"


def test_dockerfile_installs_the_cloud_extra() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.1[1-9]", text, re.M)
    assert 'pip install ".[cloud]"' in text
    for d in re.findall(r"^COPY (\S+) ", text, re.M):
        assert (DEPLOY.parent / d).exists(), f"Dockerfile copies missing {d}"
    assert re.search(r"^USER ", text, re.M), "run as non-root"


def test_the_example_edge_config_loads_as_the_agent_reads_it() -> None:
    from edge_agent import load_config

    cfg = load_config(DEPLOY / "systemd" / "edge.example.toml")
    assert cfg.fetch_mode == "mqtt" and cfg.metrics_port == 9464 and cfg.log_format == "json"
    assert cfg.hard.resend_budget_bytes_per_hour == 40 << 20
    assert [s.kind for s in cfg.hard.selectors] == ["low_confidence", "likely_miss"]
