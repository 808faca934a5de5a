#!/usr/bin/env python3
"""Blue-green releases of the IntelliLog-AI server on Kubernetes (build/k8s/).

Two Deployments, ``intellilog-blue`` and ``intellilog-green`` (label ``slot``), run
side by side; the Service ``intellilog`` sends traffic to the slot its selector names.
``promote IMAGE`` releases to the idle slot:

1. sets the idle Deployment's image (``kubectl set image``) and waits for the rollout
   (``kubectl rollout status --timeout``);
2. checks every pod of the idle slot: Kubernetes says Ready, it runs IMAGE, and its own
   ``GET /health/ready`` answers ``"ready": true`` (through the API server's pod proxy);
3. switches the Service selector to the idle slot;
4. watches the new slot's live traffic for ``--observe-s`` seconds: the share of 5xx
   answers in ``intellilog_http_requests_total`` (server/metrics.py; health and metrics
   routes left out), scraped from every pod's ``/metrics`` before and after;
5. keeps the switch when that share is at most ``--max-error-ratio`` (with at least
   ``--min-requests`` requests) and every pod is still ready; otherwise switches the
   Service back to the slot that was live and exits 1.

A failure before step 3 leaves the live slot untouched. The old slot keeps running its
previous image, so ``switch SLOT`` moves traffic back at once. ``status`` prints the
live slot and each slot's image. Only the Python standard library and ``kubectl`` are
needed. Exit status: 0 done; 1 release refused, rolled back, or a kubectl step
failed (one ``error:`` line says which); 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Cluster", "Failure", "RequestCounts", "build_parser", "main", "parse_requests"]

SLOTS = ("blue", "green")
METRIC = "intellilog_http_requests_total"
#: Routes that are not client traffic: probes and scrapes (always 200, they would dilute
#: the error share).
_EXCLUDED = re.compile(r"^(/health/|/v2/health/|/metrics$)")
_SAMPLE = re.compile(r"^" + METRIC + r"\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


class Failure(Exception):
    """A step that did not succeed; the message is printed as one ``error:`` line."""


@dataclass
class RequestCounts:
    """Client requests and 5xx answers of one pod (counter values)."""

    total: float = 0.0
    errors: float = 0.0


def parse_requests(text: str) -> RequestCounts:
    """Sum ``intellilog_http_requests_total`` over client routes, and over its 5xx."""
    out = RequestCounts()
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m is None:
            continue
        labels = dict(_LABEL.findall(m["labels"]))
        if _EXCLUDED.match(labels.get("route", "")):
            continue
        value = float(m["value"])
        out.total += value
        if labels.get("status", "").startswith("5"):
            out.errors += value
    return out


def _delta(before: dict[str, RequestCounts], after: dict[str, RequestCounts]) -> RequestCounts:
    """Requests between two scrapes, per pod; a counter that went down (the pod's
    server restarted) counts from zero, as Prometheus' ``increase`` does."""
    d = RequestCounts()
    for pod, a in after.items():
        b = before.get(pod, RequestCounts())
        reset = a.total < b.total or a.errors < b.errors
        d.total += a.total if reset else a.total - b.total
        d.errors += a.errors if reset else a.errors - b.errors
    return d


@dataclass
class Cluster:
    """The objects of one namespace, through ``kubectl``."""

    namespace: str
    kubectl: str = "kubectl"
    context: str | None = None
    app: str = "intellilog"
    port: int = 8000
    calls: list[list[str]] = field(default_factory=list)

    def run(self, *args: str) -> str:
        cmd = [self.kubectl, "-n", self.namespace]
        if self.context:
            cmd += ["--context", self.context]
        cmd += list(args)
        self.calls.append(cmd)
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        except FileNotFoundError:
            raise Failure(
                f"{self.kubectl}: not found (install kubectl or pass --kubectl)"
            ) from None
        if res.returncode != 0:
            why = (res.stderr or res.stdout).strip().splitlines()
            raise Failure(
                f"`kubectl {' '.join(args)}` failed: {why[-1] if why else res.returncode}"
            )
        return res.stdout

    def deployment(self, slot: str) -> str:
        return f"{self.app}-{slot}"

    def live_slot(self) -> str:
        slot = self.run("get", "service", self.app, "-o", "jsonpath={.spec.selector.slot}").strip()
        if slot not in SLOTS:
            raise Failure(
                f"service {self.app}: selector slot is {slot!r}, expected blue or green "
                "(apply build/k8s first)"
            )
        return slot

    def set_image(self, slot: str, image: str) -> None:
        self.run("set", "image", f"deployment/{self.deployment(slot)}", f"{self.app}={image}")

    def rollout(self, slot: str, timeout: str) -> None:
        self.run("rollout", "status", f"deployment/{self.deployment(slot)}", f"--timeout={timeout}")

    def pods(self, slot: str) -> list[dict[str, Any]]:
        selector = (
            f"app.kubernetes.io/name={self.app},app.kubernetes.io/component=server,slot={slot}"
        )
        items = json.loads(self.run("get", "pods", "-l", selector, "-o", "json"))["items"]
        return [p for p in items if not p["metadata"].get("deletionTimestamp")]

    def proxy(self, pod: str, path: str) -> str:
        return self.run(
            "get",
            "--raw",
            f"/api/v1/namespaces/{self.namespace}/pods/{pod}:{self.port}/proxy{path}",
        )

    def switch(self, slot: str) -> None:
        patch = json.dumps({"spec": {"selector": {"slot": slot}}})
        self.run("patch", "service", self.app, "--type", "merge", "-p", patch)
        if (now := self.live_slot()) != slot:
            raise Failure(f"service {self.app} still selects slot {now} after the switch")

    def image_of(self, slot: str) -> str:
        return self.run(
            "get",
            "deployment",
            self.deployment(slot),
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ).strip()


def _check_ready(cluster: Cluster, slot: str, image: str | None) -> list[str]:
    """Names of the slot's pods, each Ready, running ``image`` and answering ready."""
    pods = cluster.pods(slot)
    if not pods:
        raise Failure(f"slot {slot} has no pods")
    names = []
    for p in pods:
        name = p["metadata"]["name"]
        images = [c["image"] for c in p["spec"]["containers"]]
        if image is not None and image not in images:
            raise Failure(f"pod {name} runs {', '.join(images)}, not {image}")
        conds = {c["type"]: c["status"] for c in p.get("status", {}).get("conditions", [])}
        if conds.get("Ready") != "True":
            raise Failure(f"pod {name} is not Ready")
        try:
            body = json.loads(cluster.proxy(name, "/health/ready"))
        except json.JSONDecodeError:
            raise Failure(f"pod {name}: /health/ready did not answer JSON") from None
        if body.get("ready") is not True:
            raise Failure(f"pod {name}: /health/ready says {body}")
        names.append(name)
    return names


def say(msg: str) -> None:
    """Progress goes to stderr, one line per step."""
    print(msg, file=sys.stderr)


def _scrape(cluster: Cluster, pods: Sequence[str]) -> dict[str, RequestCounts]:
    return {p: parse_requests(cluster.proxy(p, "/metrics")) for p in pods}


def promote(
    cluster: Cluster,
    image: str,
    *,
    rollout_timeout: str,
    observe_s: float,
    max_error_ratio: float,
    min_requests: int,
) -> int:
    live = cluster.live_slot()
    idle = SLOTS[1 - SLOTS.index(live)]
    say(f"live slot {live}; releasing {image} to slot {idle}")
    try:
        cluster.set_image(idle, image)
        cluster.rollout(idle, rollout_timeout)
        pods = _check_ready(cluster, idle, image)
    except Failure as exc:
        raise Failure(f"{exc}; nothing switched: slot {live} is still live") from None
    say(f"slot {idle}: {len(pods)} pod(s) ready with {image}")
    before = _scrape(cluster, pods)
    cluster.switch(idle)
    say(f"service {cluster.app} -> slot {idle}; watching its traffic for {observe_s:g} s")
    time.sleep(observe_s)
    try:
        pods_after = _check_ready(cluster, idle, image)
        seen = _delta(before, _scrape(cluster, pods_after))
        if seen.total < min_requests:
            raise Failure(
                f"slot {idle} answered {seen.total:.0f} requests in {observe_s:g} s, "
                f"fewer than --min-requests {min_requests}"
            )
        ratio = seen.errors / seen.total if seen.total else 0.0
        if ratio > max_error_ratio:
            raise Failure(
                f"slot {idle} answered 5xx to {seen.errors:.0f} of {seen.total:.0f} requests "
                f"({ratio:.2%} > {max_error_ratio:.2%})"
            )
    except Failure as exc:
        cluster.switch(live)
        raise Failure(f"{exc}; switched back: slot {live} is live again") from None
    say(
        f"slot {idle} is live with {image}: {seen.total:.0f} requests, {seen.errors:.0f} 5xx "
        f"({ratio:.2%}); slot {live} stays up on its previous image "
        f"(switch back: build/k8s/bluegreen.py -n {cluster.namespace} switch {live})"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command line (the docs' commands are parsed with it in tests/build)."""
    p = argparse.ArgumentParser(
        prog="bluegreen.py", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    p.add_argument("-n", "--namespace", required=True, help="e.g. intellilog")
    p.add_argument("--context", help="kubeconfig context (default: the current one)")
    p.add_argument("--kubectl", default="kubectl", help="kubectl binary (default: kubectl)")
    sub = p.add_subparsers(dest="command", required=True)
    pr = sub.add_parser("promote", help="release IMAGE to the idle slot, then switch to it")
    pr.add_argument("image", help="e.g. registry.example.com/intellilog:0.2.0")
    pr.add_argument("--rollout-timeout", default="600s", help="kubectl duration (default 600s)")
    pr.add_argument(
        "--observe-s", type=float, default=120.0, help="seconds of live traffic to judge"
    )
    pr.add_argument(
        "--max-error-ratio", type=float, default=0.01, help="largest 5xx share kept (0.01 = 1%%)"
    )
    pr.add_argument(
        "--min-requests", type=int, default=0, help="fewest requests for a verdict (default 0)"
    )
    sw = sub.add_parser("switch", help="point the Service at SLOT now (manual switch back)")
    sw.add_argument("slot", choices=SLOTS)
    sub.add_parser("status", help="the live slot and each slot's image")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.command == "promote":
        if not 0 <= args.max_error_ratio <= 1:
            p.error(f"--max-error-ratio {args.max_error_ratio}: a share within [0, 1]")
        if args.observe_s < 0 or args.min_requests < 0:
            p.error("--observe-s and --min-requests must be >= 0")
    cluster = Cluster(args.namespace, kubectl=args.kubectl, context=args.context)
    try:
        if args.command == "promote":
            return promote(
                cluster,
                args.image,
                rollout_timeout=args.rollout_timeout,
                observe_s=args.observe_s,
                max_error_ratio=args.max_error_ratio,
                min_requests=args.min_requests,
            )
        if args.command == "switch":
            _check_ready(cluster, args.slot, None)
            cluster.switch(args.slot)
            say(f"service {cluster.app} -> slot {args.slot}")
            return 0
        live = cluster.live_slot()
        for slot in SLOTS:
            mark = "live" if slot == live else "idle"
            print(f"{slot}\t{mark}\t{cluster.image_of(slot)}")
        return 0
    except Failure as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
