"""The refresh loop both monitors run: refresh now, then every ``interval_s`` seconds,
until cancelled. A failing refresh keeps the last figures, is logged once per distinct
message (expected failures, e.g. the store being down) or with its traceback (a bug),
and is tried again at the next tick."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable

from kernels.errors import ConfigError

__all__ = ["refresh_every"]

log = logging.getLogger("intellilog.monitoring")


async def refresh_every(
    refresh: Callable[[], Awaitable[object]],
    interval_s: float,
    name: str,
    expected: tuple[type[BaseException], ...],
) -> None:
    if not (math.isfinite(interval_s) and interval_s > 0):
        raise ConfigError(f"interval_s={interval_s!r}: must be > 0 seconds")
    said = ""
    event = {"event": f"{name}_refresh_failed"}
    while True:
        try:
            await refresh()
        except expected as e:
            if str(e) != said:
                said = str(e)
                log.warning("%s refresh failed, keeping the last figures: %s", name, e, extra=event)
        except Exception:
            log.exception("%s refresh failed (a bug), keeping the last figures", name, extra=event)
        else:
            said = ""
        await asyncio.sleep(interval_s)
