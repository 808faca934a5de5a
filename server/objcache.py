"""The compiled engine's object cache on disk (:class:`kernels.compiled.ObjectCache`).

One file per compiled forest, ``<folder>/forest-<key>.o``: a magic line, the sha256 of
the object bytes, then the bytes. A file is written under a temporary name and renamed,
so a concurrent process never reads half a file; a file whose hash does not match is
reported and ignored (the forest is compiled again), never handed to the JIT linker.
The folder is ``$INTELLILOG_CACHE_DIR``, else ``~/.cache/intellilog/compiled``. When it
cannot be created or written, :meth:`FileObjectCache.put` logs one warning and says
why: the forest is then compiled in memory, in every process.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
from pathlib import Path

__all__ = ["CACHE_ENV", "FileObjectCache", "default_cache_dir"]

log = logging.getLogger("intellilog.engines")

#: Environment variable naming the cache folder.
CACHE_ENV = "INTELLILOG_CACHE_DIR"
_MAGIC = b"intellilog compiled forest\n"


def default_cache_dir() -> Path:
    """``$INTELLILOG_CACHE_DIR``, else ``~/.cache/intellilog/compiled``."""
    raw = os.environ.get(CACHE_ENV, "").strip()
    return Path(raw).expanduser() if raw else Path.home() / ".cache" / "intellilog" / "compiled"


class FileObjectCache:
    """Object code in files under ``folder`` (None: :func:`default_cache_dir`)."""

    def __init__(self, folder: str | Path | None = None) -> None:
        self.folder = Path(folder) if folder is not None else default_cache_dir()

    def path(self, key: str) -> Path:
        return self.folder / f"forest-{key[:40]}.o"

    def where(self, key: str) -> str:
        return str(self.path(key))

    def get(self, key: str) -> bytes | None:
        """The object bytes stored under ``key``; None when missing, unreadable or damaged."""
        path = self.path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("compiled-forest cache %s unreadable (%s): recompiling", path, exc)
            return None
        head = len(_MAGIC) + 32
        if len(data) > head and data.startswith(_MAGIC):
            obj = data[head:]
            if hashlib.sha256(obj).digest() == data[len(_MAGIC) : head]:
                return obj
        log.warning("compiled-forest cache %s is damaged: recompiling", path)
        return None

    def put(self, key: str, obj: bytes) -> str | None:
        """Store ``obj`` atomically; None on success, else why not (logged once here)."""
        path = self.path(key)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(_MAGIC + hashlib.sha256(obj).digest() + obj)
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            why = f"cache folder not writable: {type(exc).__name__}: {exc}"
            log.warning(
                "compiled-forest cache folder %s is not writable (%s): compiled in memory, "
                "every process will compile this forest again",
                path.parent,
                exc,
            )
            return why
        return None
