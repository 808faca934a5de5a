"""Container health check: exit 0 when ``GET /health/ready`` of the local server is 200.

Used by the image's HEALTHCHECK (and so by Compose's ``service_healthy``): the slim
image has no curl. Readiness, not liveness: a server still compiling its model, or
whose model failed to load, is not healthy. Port: ``$INTELLILOG_PORT`` (default 8000).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

__all__ = ["main"]


def main() -> int:
    port = os.environ.get("INTELLILOG_PORT", "8000")
    url = f"http://127.0.0.1:{port}/health/ready"
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            ok = resp.status == 200
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1
    if not ok:
        print(f"unhealthy: {url} answered {resp.status}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
