"""The served model and its hot swap.

A swap loads the new version in a worker thread, verifies checksums and the spec
hash (``load_model``), warms it up, and only then replaces the reference that
handlers read. A handler reads the reference once per request, so requests in
flight finish on the model they started with. A broken version is refused; the old
one keeps serving, and the failure is logged and counted.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Any

import numpy as np

from kernels.errors import IntelliLogError, ModelLoadError
from kernels.features import Columns
from server import metrics
from server.models import LoadedModel, load_model
from training.registry import Registry

__all__ = ["ModelHolder", "warm_up"]

log = logging.getLogger("intellilog.server")


def warm_up(model: LoadedModel) -> None:
    """Compile/load every kernel on both paths (one row and a batch) before serving."""
    pipe = model.pipe
    for n in (1, 64):
        cols = Columns(
            np.full(n, 52.5),
            np.full(n, 13.4),
            np.full(n, 52.51),
            np.full(n, 13.41),
            np.full(n, 1_767_225_600, dtype=np.int64),
            np.zeros(n, dtype=np.int32),
            np.zeros((n, len(pipe.spec.categorical)), dtype=np.int32),
            np.ones((n, len(pipe.spec.numeric))),
        )
        model.predict(pipe.matrix(cols))


class ModelHolder:
    def __init__(
        self,
        registry: Registry,
        alias: str,
        engine: str,
        threads: int = 1,
        allow_gpu: bool | None = None,
        gpu_min_rows: int | None = None,
    ) -> None:
        self.registry = registry
        self.alias = alias
        self.engine = engine
        self.threads = threads
        self.allow_gpu = allow_gpu
        self.gpu_min_rows = gpu_min_rows
        self.model: LoadedModel | None = None
        self.ready = False
        self.last_error: str | None = None
        self._lock = asyncio.Lock()
        self._aliases_mtime: float | None = None

    def _load(self, ref: str) -> LoadedModel:
        m = load_model(
            self.registry,
            ref,
            engine=self.engine,
            threads=self.threads,
            allow_gpu=self.allow_gpu,
            gpu_min_rows=self.gpu_min_rows,
        )
        warm_up(m)
        return m

    def load_initial(self) -> LoadedModel:
        """Blocking first load (start-up); raises ModelLoadError with a way forward."""
        if not self.registry.versions():
            raise ModelLoadError(
                f"no model in {self.registry.location}: train one first, e.g. "
                "`intellilog generate --rows 200000 --out data/d.parquet && "
                "intellilog train --data data/d.parquet --promote`"
            )
        self._aliases_mtime = self._mtime()
        self.model = self._load(self.alias)
        self.ready = True
        self._info(None, self.model)
        log.info(
            "serving model %s (%s on %s)",
            self.model.version,
            self.model.engine_name,
            self.model.device,
        )
        return self.model

    def _info(self, old: LoadedModel | None, new: LoadedModel) -> None:
        if old is not None:
            metrics.MODEL_INFO.labels(old.version, old.engine_name, old.device).set(0)
        metrics.MODEL_INFO.labels(new.version, new.engine_name, new.device).set(1)

    def _mtime(self) -> float | None:
        """The registry's alias token: ``aliases.json``'s mtime in a folder, the newest
        alias generation in a remote registry. A remote read that fails (network, store
        down) keeps the last token, so the next poll tries again and nothing reloads."""
        try:
            return self.registry.alias_token()
        except IntelliLogError as exc:
            log.warning("cannot poll the aliases of %s: %s", self.registry.location, exc)
            return self._aliases_mtime

    async def reload(self, reason: str, ref: str | None = None) -> dict[str, Any]:
        """Swap to what ``ref`` (default: the alias) points to, if it differs."""
        async with self._lock:
            old = self.model
            try:
                target = self.registry.resolve(ref or self.alias)
            except IntelliLogError as exc:
                return self._failed(reason, str(exc))
            if old is not None and old.version == target and ref is None:
                self.last_error = None
                return {"changed": False, "version": target}
            t0 = time.perf_counter()
            try:
                new = await asyncio.to_thread(self._load, target)
            except IntelliLogError as exc:
                return self._failed(reason, str(exc))
            except Exception as exc:  # keep serving the old model whatever went wrong
                log.exception("model reload failed")
                return self._failed(reason, f"{type(exc).__name__}: {exc}")
            if old is not None and new.pipe.spec.hash != old.pipe.spec.hash:
                return self._failed(
                    reason,
                    f"model {new.version} was trained with spec hash {new.pipe.spec.hash}, the "
                    f"server runs spec hash {old.pipe.spec.hash}: restart the server to change the spec",
                )
            self.model = new  # the atomic switch
            gc.freeze()  # keep the new model's heap out of full collections too
            self.ready = True
            self.last_error = None
            self._info(old, new)
            metrics.MODEL_RELOADS.labels("ok").inc()
            log.info(
                "model swapped %s -> %s (%s) in %.2fs",
                old.version if old else None,
                new.version,
                reason,
                time.perf_counter() - t0,
                extra={
                    "event": "model_swap",
                    "from": old.version if old else None,
                    "to": new.version,
                },
            )
            return {"changed": True, "from": old.version if old else None, "version": new.version}

    def _failed(self, reason: str, message: str) -> dict[str, Any]:
        self.last_error = message
        metrics.MODEL_RELOADS.labels("failed").inc()
        metrics.ERRORS.labels("model_load").inc()
        log.error(
            "model reload refused (%s): %s; still serving %s",
            reason,
            message,
            self.model.version if self.model else None,
            extra={"event": "model_swap_failed"},
        )
        return {
            "changed": False,
            "error": message,
            "version": self.model.version if self.model else None,
        }

    async def watch(self, interval: float) -> None:
        """Poll the alias file (a remote registry: its alias generation, off the event
        loop); reload when it changes (promote, rollback, retrain)."""
        while True:
            await asyncio.sleep(interval)
            m = await asyncio.to_thread(self._mtime) if self.registry.is_remote else self._mtime()
            if m != self._aliases_mtime:
                self._aliases_mtime = m
                await self.reload("alias changed")
