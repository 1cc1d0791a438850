#!/usr/bin/env python3
"""Checks of the chat-loadtest Helm chart (and of what `ltops --type kubernetes` renders).

Offline, without a cluster or a `helm` binary: Helm itself comes as a library with the PyPI
package helm-python-sdk (import name `helm_python`), strict Kubernetes schemas with
kubernetes-validate.

    check.py render VALUES.yaml... [--set K=V] [--set-file K=PATH] --release N --namespace NS -o OUT.yaml
    check.py lint                       Helm's strict lint (and a render) with every ci/*.yaml
    check.py validate FILE.yaml --versions 1.29.0,1.35.0
    check.py compare LTOPS.yaml CHART.yaml
    check.py checkov PATH --framework kubernetes|helm|dockerfile [--values F]...

Every subcommand exits 0 when clean, 1 on a finding and 2 on a usage problem. Run it with a
Python that has the packages (in CI: the tools venv of .ci/run, /opt/ltops-ci/venv/bin/python).

`compare` is the drift test between `ltops deploy --dry-run -o yaml` and the chart: the fields
both renderers must agree on (see `view`), with Kubernetes's defaults filled in so that an
omitted default is not a difference. `validate` reports the first schema error of each object
(kubernetes-validate stops there).
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable

import yaml

HERE = Path(__file__).resolve().parent
CHART = HERE.parent / "chat-loadtest"

# Checks skipped in `checkov`, with the reason: the one place skips are decided. Everything else
# (root, capabilities, probes, limits, read-only root, seccomp, NetworkPolicy, ...) must pass.
CHECKOV_SKIPS: dict[str, str] = {
    "CKV_K8S_43": "image digests: the chart runs the image the operator just built and pushed "
    "(image.repository/tag, ltops --image) and the stock postgres tag; it cannot know digests",
    "CKV_K8S_15": "imagePullPolicy Always: the spec fixes IfNotPresent (value image.pullPolicy); "
    "tags are not moved, and 100 agent pods should not pull on every start",
    "CKV_K8S_35": "secrets as files: chat-server takes its database URL only from "
    "CHAT_SERVER_DATABASE_URL, a flag or its config file (a ConfigMap), so it is a secretKeyRef, "
    "as is the postgres image's POSTGRES_PASSWORD (the agents' token is a file)",
    "CKV_K8S_40": "uid above 10000: only the PostgreSQL pod fails it, running as the postgres "
    "image's own user 999, the owner of its data directory (server and agents run as 10001)",
}
# Which skips apply to a framework (by check id prefix).
CHECKOV_PREFIXES = {"kubernetes": ("CKV_K8S_", "CKV2_K8S_"), "helm": ("CKV_K8S_", "CKV2_K8S_"),
                    "dockerfile": ("CKV_DOCKER_", "CKV2_DOCKER_")}

# Labels only one renderer sets: managed-by differs by design, helm.sh/chart is Helm's.
IGNORED_LABELS = {"app.kubernetes.io/managed-by", "helm.sh/chart"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet"}
# Apply order of the spec: shared objects, then per component its NetworkPolicy, Service, workload.
KIND_ORDER = ["Namespace", "ServiceAccount", "Secret", "ConfigMap", "Role", "RoleBinding", "NetworkPolicy",
              "Service", "Deployment", "StatefulSet"]
COMPONENT_ORDER = ["", "postgres", "server", "agent", "prometheus"]
PROBE_DEFAULTS = {
    "initialDelaySeconds": 0,
    "periodSeconds": 10,
    "timeoutSeconds": 1,
    "successThreshold": 1,
    "failureThreshold": 3,
}
MISSING = "<absent>"


class UsageError(Exception):
    """A problem with the command line or its inputs (exit status 2)."""


# ---------------------------------------------------------------- helpers


def load_docs(path: str | Path) -> list[dict[str, Any]]:
    """Every object of a multi-document YAML file (`List` objects expanded, empty ones dropped)."""
    try:
        with open(path, encoding="utf-8") as f:
            docs = list(yaml.safe_load_all(f))
    except (OSError, yaml.YAMLError) as e:
        raise UsageError(f"{path}: {e}") from e
    objects = []
    for doc in docs:
        if not doc:
            continue
        if not isinstance(doc, dict) or "kind" not in doc:
            raise UsageError(f"{path}: a document is not a Kubernetes object: {str(doc)[:80]}")
        objects.extend((doc.get("items") or []) if doc["kind"] == "List" else [doc])
    return objects


def ident(obj: dict[str, Any]) -> str:
    """`Kind/name` of an object."""
    return f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"


def apply_order(obj: dict[str, Any]) -> tuple[int, int, int]:
    """Sort key putting objects in the spec's apply order."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    component = labels.get("app.kubernetes.io/component", "")
    kind = obj.get("kind", "")
    shared = kind in ("Namespace", "Secret", "ConfigMap")
    return (
        0 if shared else 1,
        COMPONENT_ORDER.index(component) if component in COMPONENT_ORDER else len(COMPONENT_ORDER),
        KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER),
    )


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` merged into a copy of `base` (maps recursively, like Helm's values files)."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def helm_module() -> Any:
    """The helm-python-sdk module, or a usage error saying how to install it."""
    try:
        import helm_python
    except ImportError as e:
        raise UsageError("helm-python-sdk is missing: pip install helm-python-sdk") from e
    # Helm logs each `fail` it meets in lint mode at INFO; lint_one reports those itself.
    helm_python.enable_logging(logging.WARNING)
    return helm_python


# ---------------------------------------------------------------- render


def values_from(files: Iterable[str], sets: Iterable[str], set_files: Iterable[str]) -> dict[str, Any]:
    """Values as `helm -f F --set K=V --set-file K=PATH` composes them (later wins)."""
    helm = helm_module()
    values: dict[str, Any] = {}
    for name in files:
        try:
            text = Path(name).read_text(encoding="utf-8")
        except OSError as e:
            raise UsageError(f"{name}: {e}") from e
        values = deep_merge(values, helm.values_from_yaml(text) or {})
    for expr in sets:
        values = deep_merge(values, helm.parse_set_string(expr))
    for expr in set_files:
        values = deep_merge(values, helm.parse_set_file(expr))
    return values


def render_templates(values: dict[str, Any], release: str, namespace: str) -> list[tuple[str, dict[str, Any]]]:
    """(template, object) of the chart's objects for `values`, in apply order (no cluster)."""
    helm = helm_module()
    try:
        with helm.Chart.load(CHART) as chart:
            rendered = chart.render(values, name=release, namespace=namespace, is_install=True)
    except helm.HelmError as e:
        raise UsageError(f"rendering {CHART.name} failed: {e}") from e
    pairs = [
        (template, doc)
        for template, text in sorted(rendered.items())
        if not template.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(text)
        if doc
    ]
    return sorted(pairs, key=lambda pair: apply_order(pair[1]))


def render_chart(values: dict[str, Any], release: str, namespace: str) -> list[dict[str, Any]]:
    """The chart's objects for `values`, in apply order (`helm template` without a cluster)."""
    return [obj for _, obj in render_templates(values, release, namespace)]


def dump_docs(objects: list[dict[str, Any]]) -> str:
    """A multi-document YAML stream of `objects`."""
    return yaml.safe_dump_all(objects, sort_keys=False, explicit_start=True, width=1000)


def cmd_render(args: argparse.Namespace) -> int:
    values = values_from(args.values, args.set, args.set_file)
    objects = render_chart(values, args.release, args.namespace)
    text = dump_docs(objects)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"{args.output}: {len(objects)} objects ({', '.join(ident(o) for o in objects)})")
    return 0


# ---------------------------------------------------------------- lint

SEVERITY = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}


def lint_one(values_file: Path | None) -> bool:
    """Helm's strict lint with one values file (None: the defaults); True when clean."""
    helm = helm_module()
    values = values_from([str(values_file)], [], []) if values_file else None
    label = values_file.name if values_file else "default values"
    report = helm.lint(CHART, values, strict=True, namespace="chat-loadtest")
    clean = not report.get("errors")
    try:
        # Helm's lint mode turns `fail` into a log line; a real render does not.
        render_templates(values or {}, "lint-release", "chat-loadtest")
    except UsageError as e:
        clean = False
        print(f"  {label}: [ERROR] {e}")
    for message in report.get("messages") or []:
        severity = message.get("severity", 0)
        clean = clean and severity < 2 and severity != 0
        print(f"  {label}: [{SEVERITY.get(severity, severity)}] {message.get('path')}: {message.get('error')}")
    for error in report.get("errors") or []:
        print(f"  {label}: [ERROR] {error}")
    print(f"{'ok  ' if clean else 'FAIL'} lint {label}")
    return clean


def cmd_lint(_args: argparse.Namespace) -> int:
    files = sorted((CHART / "ci").glob("*.yaml"))
    if not files:
        raise UsageError(f"no values files in {CHART / 'ci'}")
    results = [lint_one(None)] + [lint_one(f) for f in files]
    return 0 if all(results) else 1


# ---------------------------------------------------------------- validate


def known_versions() -> list[str]:
    """The Kubernetes versions kubernetes-validate has schemas for (e.g. 1.29.0)."""
    from kubernetes_validate import utils

    return utils.all_versions()


def check_versions(versions: list[str]) -> list[str]:
    """`versions` if kubernetes-validate has schemas for each minor version, else a usage error."""
    known = known_versions()
    minors = {v.rsplit(".", 1)[0] for v in known}
    unknown = [v for v in versions if v.lstrip("v").rsplit(".", 1)[0] not in minors]
    if unknown or not versions:
        raise UsageError(f"unknown Kubernetes version(s) {unknown}; kubernetes-validate knows {known[0]}..{known[-1]}")
    return [v.lstrip("v") for v in versions]


def validate_object(obj: dict[str, Any], version: str) -> str | None:
    """None when `obj` is valid for `version` (strict: no unknown fields), else the reason."""
    import kubernetes_validate as kv

    try:
        kv.validate(obj, version, strict=True)
    except kv.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "(top)"
        return f"at {where}: {e.message}"
    except (kv.SchemaNotFoundError, kv.VersionNotSupportedError) as e:
        return e.message
    return None


def cmd_validate(args: argparse.Namespace) -> int:
    versions = check_versions([v for v in args.versions.split(",") if v])
    objects = load_docs(args.file)
    failures = 0
    for version in versions:
        failed = 0
        for obj in objects:
            reason = validate_object(obj, version)
            if reason:
                failed += 1
                print(f"FAIL {version} {ident(obj)}: {reason}")
        status = "ok  " if not failed else "FAIL"
        print(f"{status} {len(objects)} objects against Kubernetes {version} (strict): {failed} invalid")
        failures += failed
    return 1 if failures else 0


# ---------------------------------------------------------------- compare


class Quantity:
    """A Kubernetes quantity compared by value ("1" == "1000m"), shown as written."""

    SUFFIXES = {
        "m": Fraction(1, 1000), "k": Fraction(10**3), "M": Fraction(10**6), "G": Fraction(10**9),
        "T": Fraction(10**12), "Ki": Fraction(2**10), "Mi": Fraction(2**20), "Gi": Fraction(2**30),
        "Ti": Fraction(2**40),
    }

    def __init__(self, text: Any) -> None:
        self.text = str(text)
        self.value = self.parse(self.text)

    @classmethod
    def parse(cls, text: str) -> Fraction | str:
        for suffix in sorted(cls.SUFFIXES, key=len, reverse=True):
            if text.endswith(suffix):
                number = text[: -len(suffix)]
                try:
                    return Fraction(number) * cls.SUFFIXES[suffix]
                except ValueError:
                    return text
        try:
            return Fraction(text)
        except ValueError:
            return text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Quantity) and self.value == other.value

    def __repr__(self) -> str:
        return repr(self.text)


class Keyed(dict):
    """A list of named items as a map (diff paths read `containers[chat-server]`)."""


def keyed(items: list[dict[str, Any]] | None, key: str, normalize=lambda x: x) -> Keyed:
    """`items` keyed by their `key` field, each normalized."""
    return Keyed((str(item.get(key)), normalize(item)) for item in items or [])


def labels_of(meta: dict[str, Any] | None) -> dict[str, Any]:
    labels = (meta or {}).get("labels") or {}
    return {k: v for k, v in labels.items() if k not in IGNORED_LABELS}


def norm_resources(res: dict[str, Any] | None) -> dict[str, Any]:
    res = res or {}
    return {
        part: {name: Quantity(q) for name, q in (res.get(part) or {}).items()}
        for part in ("requests", "limits")
    }


def norm_probe(probe: dict[str, Any] | None) -> dict[str, Any] | None:
    if probe is None:
        return None
    probe = {**PROBE_DEFAULTS, **probe}
    if "httpGet" in probe:
        probe["httpGet"] = {"scheme": "HTTP", "path": "/", **probe["httpGet"]}
    return probe


def norm_port(port: dict[str, Any]) -> dict[str, Any]:
    return {"protocol": "TCP", **port}


def norm_env(env: dict[str, Any]) -> dict[str, Any]:
    return {"value": env["value"]} if "valueFrom" not in env else {"valueFrom": env["valueFrom"]}


def norm_mount(mount: dict[str, Any]) -> dict[str, Any]:
    return {"readOnly": False, **mount}


def norm_volume(volume: dict[str, Any]) -> dict[str, Any]:
    volume = dict(volume)
    for source in ("secret", "configMap"):
        if source in volume:
            volume[source] = {"defaultMode": 0o644, **(volume[source] or {})}
    if "emptyDir" in volume:
        volume["emptyDir"] = volume["emptyDir"] or {}
    return volume


def norm_container(c: dict[str, Any]) -> dict[str, Any]:
    return {
        "image": c.get("image"),
        "command": c.get("command"),
        "args": c.get("args"),
        "env": keyed(c.get("env"), "name", norm_env),
        "envOrder": [e.get("name") for e in c.get("env") or []],
        "ports": keyed(c.get("ports"), "name", norm_port),
        "readinessProbe": norm_probe(c.get("readinessProbe")),
        "livenessProbe": norm_probe(c.get("livenessProbe")),
        "startupProbe": norm_probe(c.get("startupProbe")),
        "securityContext": c.get("securityContext"),
        "resources": norm_resources(c.get("resources")),
        "volumeMounts": keyed(c.get("volumeMounts"), "mountPath", norm_mount),
    }


def norm_claim(claim: dict[str, Any]) -> dict[str, Any]:
    spec = claim.get("spec") or {}
    storage = ((spec.get("resources") or {}).get("requests") or {}).get("storage")
    return {
        "accessModes": spec.get("accessModes"),
        "storage": Quantity(storage) if storage is not None else None,
        "storageClassName": spec.get("storageClassName"),
    }


def view_workload(obj: dict[str, Any]) -> dict[str, Any]:
    spec = obj.get("spec") or {}
    template = spec.get("template") or {}
    pod = template.get("spec") or {}
    view = {
        "replicas": spec.get("replicas", 1),
        "selector": spec.get("selector"),
        "template.labels": labels_of(template.get("metadata")),
        "template.annotations": (template.get("metadata") or {}).get("annotations") or {},
        "pod.securityContext": pod.get("securityContext"),
        "pod.automountServiceAccountToken": pod.get("automountServiceAccountToken"),
        "pod.serviceAccountName": pod.get("serviceAccountName", "default"),
        "pod.enableServiceLinks": pod.get("enableServiceLinks"),
        "containers": keyed(pod.get("containers"), "name", norm_container),
        "initContainers": keyed(pod.get("initContainers"), "name", norm_container),
        "volumes": keyed(pod.get("volumes"), "name", norm_volume),
    }
    if obj.get("kind") == "StatefulSet":
        view["serviceName"] = spec.get("serviceName")
        view["podManagementPolicy"] = spec.get("podManagementPolicy", "OrderedReady")
        view["volumeClaimTemplates"] = keyed(
            [{"name": (c.get("metadata") or {}).get("name"), **norm_claim(c)} for c in spec.get("volumeClaimTemplates") or []],
            "name",
        )
    return view


def view_service(obj: dict[str, Any]) -> dict[str, Any]:
    spec = obj.get("spec") or {}
    return {
        "type": spec.get("type", "ClusterIP"),
        "headless": spec.get("clusterIP") == "None",
        "ports": keyed(spec.get("ports"), "name", lambda p: {"protocol": "TCP", "targetPort": p.get("port"), **p}),
        "selector": spec.get("selector"),
    }


def view_network_policy(obj: dict[str, Any]) -> dict[str, Any]:
    spec = obj.get("spec") or {}

    def rules(direction: str, peers: str) -> list[dict[str, Any]]:
        return [
            {peers: rule.get(peers) or [], "ports": [norm_port(p) for p in rule.get("ports") or []]}
            for rule in spec.get(direction) or []
        ]

    return {
        "podSelector": spec.get("podSelector"),
        "policyTypes": sorted(spec.get("policyTypes") or ["Ingress"]),
        "ingress": rules("ingress", "from"),
        "egress": rules("egress", "to"),
    }


def view(obj: dict[str, Any]) -> dict[str, Any]:
    """The compared fields of one object, with defaults filled in."""
    kind = obj.get("kind")
    result: dict[str, Any] = {"labels": labels_of(obj.get("metadata"))}
    if kind in WORKLOAD_KINDS:
        result.update(view_workload(obj))
    elif kind == "Service":
        result.update(view_service(obj))
    elif kind == "NetworkPolicy":
        result.update(view_network_policy(obj))
    elif kind == "Secret":
        result["keys"] = sorted(set(obj.get("data") or {}) | set(obj.get("stringData") or {}))
    elif kind == "ConfigMap":
        result["data"] = obj.get("data") or {}
    elif kind == "ServiceAccount":
        result["automountServiceAccountToken"] = obj.get("automountServiceAccountToken", True)
    elif kind == "Role":
        result["rules"] = obj.get("rules") or []
    elif kind == "RoleBinding":
        result["roleRef"] = obj.get("roleRef")
        result["subjects"] = obj.get("subjects") or []
    return result


def diff(path: str, a: Any, b: Any) -> Iterable[tuple[str, Any, Any]]:
    """(path, a value, b value) for every leaf where `a` and `b` differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            if isinstance(a, Keyed) or isinstance(b, Keyed):
                sub = f"{path}[{key}]"
            else:
                sub = f"{path}.{key}" if path else str(key)
            yield from diff(sub, a.get(key, MISSING), b.get(key, MISSING))
    elif a != b:
        yield path, a, b


def compare_objects(ltops: list[dict[str, Any]], chart: list[dict[str, Any]]) -> list[str]:
    """Readable mismatches between the two renders (Namespaces are ltops's only)."""
    left = {ident(o): o for o in ltops if o.get("kind") != "Namespace"}
    right = {ident(o): o for o in chart if o.get("kind") != "Namespace"}
    problems = [f"{name}: only in the ltops render" for name in left if name not in right]
    problems += [f"{name}: only in the chart render" for name in right if name not in left]
    for name in (n for n in left if n in right):
        for field, a, b in diff("", view(left[name]), view(right[name])):
            problems.append(f"{name}: {field}\n    ltops: {a!r}\n    chart: {b!r}")
    return problems


def cmd_compare(args: argparse.Namespace) -> int:
    ltops, chart = load_docs(args.ltops), load_docs(args.chart)
    problems = compare_objects(ltops, chart)
    for problem in problems:
        print(f"DRIFT {problem}")
    count = len({ident(o) for o in ltops if o.get("kind") != "Namespace"})
    print(f"{'ok  ' if not problems else 'FAIL'} {count} objects compared, {len(problems)} difference(s)")
    return 1 if problems else 0


# ---------------------------------------------------------------- checkov

SHIM = """#!/bin/sh
# `helm` for checkov's helm framework, backed by helm-python-sdk (written by check.py).
exec "{python}" "{script}" helm-shim "$@"
"""


def helm_shim_dir(workdir: Path) -> Path:
    """A directory holding a `helm` executable that runs `check.py helm-shim`."""
    shim = workdir / "helm"
    shim.write_text(SHIM.format(python=sys.executable, script=Path(__file__).resolve()))
    shim.chmod(0o755)
    return workdir


def cmd_helm_shim(args: argparse.Namespace) -> int:
    """The subset of the helm CLI checkov calls: version, dependency list, template."""
    helm = helm_module()
    words = args.words
    if words[:1] == ["version"]:
        print(f'version.BuildInfo{{Version:"{helm.helm_sdk_version()}", GitCommit:"", GoVersion:""}}')
        return 0
    if words[:2] == ["dependency", "list"]:
        return 0
    if words[:1] != ["template"]:
        print(f"helm-shim: unsupported helm command {' '.join(words)}", file=sys.stderr)
        return 2
    values_files, chart, rest = [], None, iter(words[1:])
    for word in rest:
        if word in ("--values", "-f"):
            values_files.append(next(rest))
        elif not word.startswith("-"):
            chart = word
    if chart is None or Path(chart).resolve() != CHART.resolve():
        print(f"helm-shim: only renders {CHART}, not {chart}", file=sys.stderr)
        return 2
    values = values_from(values_files, [], [])
    namespace = os.environ.get("HELM_NAMESPACE", "default")
    # checkov takes any stderr output of `helm template` for a failure; Helm's note that it
    # followed the chart's `dashboards` link is not one, so it is dropped (the rest is kept).
    with tempfile.TemporaryFile() as err:
        saved = os.dup(2)
        os.dup2(err.fileno(), 2)
        try:
            rendered = render_templates(values, "release-name", namespace)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        err.seek(0)
        for line in err.read().decode(errors="replace").splitlines(keepends=True):
            if "found symbolic link in path" not in line:
                sys.stderr.write(line)
    for template, obj in rendered:
        sys.stdout.write(f"---\n# Source: {template}\n{yaml.safe_dump(obj, sort_keys=False)}")
    return 0


def checkov_skips(framework: str) -> dict[str, str]:
    """The skipped checks that belong to `framework`."""
    return {k: v for k, v in CHECKOV_SKIPS.items() if k.startswith(CHECKOV_PREFIXES[framework])}


def checkov_command(target: Path, framework: str, values: list[str]) -> list[str]:
    command = ["checkov", "-d" if target.is_dir() else "-f", str(target), "--framework", framework,
               "--skip-download", "--quiet", "--compact", "-o", "cli"]
    skips = checkov_skips(framework)
    if skips:
        command += ["--skip-check", ",".join(skips)]
    for name in values:
        command += ["--var-file", name]
    return command


def cmd_checkov(args: argparse.Namespace) -> int:
    target = Path(args.path)
    if not target.exists():
        raise UsageError(f"{target}: no such file or directory")
    for check, reason in checkov_skips(args.framework).items():
        print(f"skip {check}: {reason}")
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="check-helm-") as workdir:
        if args.framework == "helm":
            # checkov renders charts with `helm template`; there is no helm binary here.
            env["PATH"] = f"{helm_shim_dir(Path(workdir))}{os.pathsep}{env.get('PATH', '')}"
            env.setdefault("HELM_NAMESPACE", "chat-loadtest")
        command = checkov_command(target, args.framework, args.values)
        try:
            proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        except FileNotFoundError as e:
            raise UsageError("checkov is not installed: pip install checkov") from e
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    # checkov exits 0 when it ran nothing (e.g. a framework without its tools): that is no pass.
    if "Passed checks:" not in proc.stdout and proc.returncode == 0:
        print(f"FAIL checkov ran no {args.framework} checks on {target}")
        return 1
    return 1 if proc.returncode else 0


# ---------------------------------------------------------------- main


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("render", help="render the chart to a multi-document YAML file")
    r.add_argument("values", nargs="*", help="values files, later ones win")
    r.add_argument("--set", action="append", default=[], metavar="K=V")
    r.add_argument("--set-file", action="append", default=[], metavar="K=PATH")
    r.add_argument("--release", required=True)
    r.add_argument("--namespace", required=True)
    r.add_argument("-o", "--output", required=True, help="output file, - for stdout")
    r.set_defaults(func=cmd_render)

    lint = sub.add_parser("lint", help="helm lint --strict with every ci/*.yaml")
    lint.set_defaults(func=cmd_lint)

    v = sub.add_parser("validate", help="strict schema validation of every object")
    v.add_argument("file")
    v.add_argument("--versions", required=True, help="comma-separated, e.g. 1.29.0,1.35.0")
    v.set_defaults(func=cmd_validate)

    c = sub.add_parser("compare", help="drift between ltops's render and the chart's")
    c.add_argument("ltops")
    c.add_argument("chart")
    c.set_defaults(func=cmd_compare)

    k = sub.add_parser("checkov", help="checkov with the skip list of this script")
    k.add_argument("path")
    k.add_argument("--framework", required=True, choices=["kubernetes", "helm", "dockerfile"])
    k.add_argument("--values", action="append", default=[], help="helm: values file (--var-file)")
    k.set_defaults(func=cmd_checkov)

    shim = sub.add_parser("helm-shim", help=argparse.SUPPRESS)
    shim.add_argument("words", nargs=argparse.REMAINDER)
    shim.set_defaults(func=cmd_helm_shim)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
