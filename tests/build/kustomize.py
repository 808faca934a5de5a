"""A tiny kustomize: enough of it to render build/k8s/overlays/* without a binary.

Supports exactly what those kustomizations use: ``resources`` (files and folders with
their own kustomization.yaml), ``namespace``, ``images`` (newName/newTag) and
``patches`` (strategic-merge patch files, with an optional ``target`` of kind, name
and a label selector). Anything else in a kustomization is refused, so the overlays
cannot grow past what this renderer (and the test that compares it with
``kubectl kustomize``) understands.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

__all__ = ["render"]

_KEYS = {"apiVersion", "kind", "namespace", "resources", "images", "patches"}
_CLUSTER_SCOPED = {"Namespace", "PersistentVolume", "ClusterRole", "ClusterRoleBinding"}
#: Lists merged item by item on this key (Kubernetes' patchMergeKey); others are replaced.
_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
}

Doc = dict[str, Any]


def render(folder: Path) -> list[Doc]:
    """The documents of the kustomization in ``folder``."""
    k = yaml.safe_load((folder / "kustomization.yaml").read_text(encoding="utf-8"))
    unknown = set(k) - _KEYS
    if unknown:
        raise ValueError(f"{folder}/kustomization.yaml: unsupported fields {sorted(unknown)}")
    docs: list[Doc] = []
    for res in k.get("resources", []):
        path = folder / res
        if path.is_dir():
            docs += render(path)
        else:
            text = path.read_text(encoding="utf-8")
            docs += [d for d in yaml.safe_load_all(text) if d]
    for p in k.get("patches", []):
        body = yaml.safe_load((folder / p["path"]).read_text(encoding="utf-8"))
        target = p.get("target")
        if target is None:
            target = {"kind": body["kind"], "name": body["metadata"]["name"]}
        patch = copy.deepcopy(body)
        patch["metadata"].pop("name", None)
        matched = [d for d in docs if _matches(d, target)]
        if not matched:
            raise ValueError(f"{folder}/{p['path']}: the patch matches no resource")
        for d in matched:
            _merge(d, patch)
    for img in k.get("images", []):
        for c in _containers(docs):
            head, _, last = c["image"].split("@")[0].rpartition("/")
            name = (f"{head}/" if head else "") + last.split(":")[0]  # without tag or digest
            if name == img["name"]:
                c["image"] = f"{img.get('newName', name)}:{img['newTag']}"
    if ns := k.get("namespace"):
        for d in docs:
            if d["kind"] not in _CLUSTER_SCOPED:
                d["metadata"]["namespace"] = ns
    return docs


def _matches(doc: Doc, target: dict[str, str]) -> bool:
    if "kind" in target and doc["kind"] != target["kind"]:
        return False
    if "name" in target and doc["metadata"]["name"] != target["name"]:
        return False
    if "labelSelector" in target:
        labels = doc["metadata"].get("labels", {})
        for term in target["labelSelector"].split(","):
            key, _, value = term.partition("=")
            if labels.get(key.strip()) != value.strip():
                return False
    return True


def _merge(base: Doc, patch: Doc) -> None:
    for key, value in patch.items():
        old = base.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            _merge(old, value)
        elif isinstance(value, list) and isinstance(old, list) and key in _MERGE_KEYS:
            by = _MERGE_KEYS[key]
            for item in value:
                same = [o for o in old if o.get(by) == item.get(by)]
                if same:
                    _merge(same[0], item)
                else:
                    old.append(copy.deepcopy(item))
        else:
            base[key] = copy.deepcopy(value)


def _containers(docs: list[Doc]) -> list[Doc]:
    out: list[Doc] = []
    for d in docs:
        spec = d.get("spec", {})
        pod = spec.get("template", {}).get("spec")
        if d["kind"] == "CronJob":
            pod = spec["jobTemplate"]["spec"]["template"]["spec"]
        if pod:
            out += pod.get("containers", []) + pod.get("initContainers", [])
    return out
