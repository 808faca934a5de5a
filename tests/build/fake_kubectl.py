"""A stand-in for ``kubectl`` that answers build/k8s/bluegreen.py as a cluster would.

The test puts a ``kubectl`` wrapper that runs this file first on PATH. State lives in
the JSON file ``$FAKE_KUBE_STATE``; every call is appended to ``$FAKE_KUBE_CALLS`` (one
JSON list of arguments per line). State fields:

* ``namespace``: the only namespace that exists;
* ``slot``: the Service's selector slot; ``images``: slot -> the Deployment's image;
* ``rollout_ok``: whether ``rollout status`` succeeds;
* ``pods``: slot -> pod names; ``ready``: pod -> bool (Ready and /health/ready);
* ``metrics``: pod -> list of /metrics texts, one per scrape (the last one repeats).

Unknown commands exit 99, so a call the script should not make fails the test.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any, NoReturn

STATE = Path(os.environ["FAKE_KUBE_STATE"])


def fail(msg: str, code: int = 1) -> NoReturn:
    print(msg, file=sys.stderr)
    sys.exit(code)


def pod_json(st: dict[str, Any], slot: str, name: str) -> dict[str, Any]:
    ready = "True" if st["ready"].get(name, True) else "False"
    return {
        "metadata": {"name": name, "labels": {"slot": slot}},
        "spec": {"containers": [{"name": "intellilog", "image": st["images"][slot]}]},
        "status": {"conditions": [{"type": "Ready", "status": ready}]},
    }


def main(argv: list[str]) -> None:
    with open(os.environ["FAKE_KUBE_CALLS"], "a", encoding="utf-8") as f:
        f.write(json.dumps(argv) + "\n")
    st = json.loads(STATE.read_text(encoding="utf-8"))
    if argv[:1] != ["-n"] or len(argv) < 3:
        fail("fake kubectl: expected -n NAMESPACE first", 99)
    if argv[1] != st["namespace"]:
        fail(f'Error from server (NotFound): namespaces "{argv[1]}" not found')
    args = argv[2:]
    ns = st["namespace"]
    match args:
        case ["get", "service", "intellilog", "-o", "jsonpath={.spec.selector.slot}"]:
            print(st["slot"], end="")
        case ["get", "deployment", dep, "-o", _]:
            print(st["images"][dep.removeprefix("intellilog-")], end="")
        case ["set", "image", dep, spec]:
            slot = dep.removeprefix("deployment/intellilog-")
            container, _, image = spec.partition("=")
            if slot not in st["images"] or container != "intellilog":
                fail(f"error: unable to find container named {container!r}")
            st["images"][slot] = image
            print(f"{dep} image updated")
        case ["rollout", "status", dep, timeout] if timeout.startswith("--timeout="):
            if not st["rollout_ok"]:
                fail("error: timed out waiting for the condition")
            print(f'deployment "{dep}" successfully rolled out')
        case ["get", "pods", "-l", selector, "-o", "json"]:
            slot = dict(t.split("=") for t in selector.split(","))["slot"]
            items = [pod_json(st, slot, n) for n in st["pods"].get(slot, [])]
            print(json.dumps({"items": items}))
        case ["get", "--raw", path]:
            m = re.fullmatch(rf"/api/v1/namespaces/{ns}/pods/([\w-]+):8000/proxy(/.*)", path)
            if m is None:
                fail(f"fake kubectl: unexpected raw path {path}", 99)
            pod, route = m.groups()
            if route == "/health/ready":
                if not st["ready"].get(pod, True):
                    fail(
                        "Error from server (ServiceUnavailable): the server is currently unable to handle the request"
                    )
                print(json.dumps({"ready": True, "model_version": "v1", "store": "open"}))
            elif route == "/metrics":
                texts = st["metrics"][pod]
                print(texts.pop(0) if len(texts) > 1 else texts[0], end="")
            else:
                fail(f"fake kubectl: unexpected route {route}", 99)
        case ["patch", "service", "intellilog", "--type", "merge", "-p", body]:
            st["slot"] = json.loads(body)["spec"]["selector"]["slot"]
            print("service/intellilog patched")
        case _:
            fail(f"fake kubectl: unexpected call {args}", 99)
    STATE.write_text(json.dumps(st), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1:])
