"""The compiled engine's object cache on disk (:class:`kernels.compiled.ObjectCache`).

One file per compiled forest, ``<folder>/forest-<key>.o``: a magic line, the sha256 of
the object bytes, then the bytes. A file is written under a temporary name and renamed,
so a concurrent process never reads half a file; a file whose hash does not match is
reported and ignored (the forest is compiled again), never handed to the JIT linker.
The folder is ``$INTELLILOG_CACHE_DIR``, else ``~/.cache/intellilog/compiled``. When it
cannot be created or written, :meth:`FileObjectCache.put` logs one warning and says
why: the forest is then compiled in memory, in every process.

The folder is kept under ``$INTELLILOG_CACHE_MAX_MB`` (default 256; 0: no limit): a hit
refreshes its file's modification time, and after each store the least recently used
files go until the rest fit (never the one just stored). A forest's object code is
0.4-2 MB here (100-500 trees of 31-63 leaves), so the default holds a few hundred; an
evicted forest is compiled again on its next load.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
from pathlib import Path

from kernels.errors import ConfigError

__all__ = ["CACHE_ENV", "CACHE_MAX_ENV", "FileObjectCache", "default_cache_dir"]

log = logging.getLogger("intellilog.engines")

#: Environment variable naming the cache folder.
CACHE_ENV = "INTELLILOG_CACHE_DIR"
#: Environment variable with the folder's size limit in MB (0: none).
CACHE_MAX_ENV = "INTELLILOG_CACHE_MAX_MB"
DEFAULT_MAX_MB = 256
_MAGIC = b"intellilog compiled forest\n"


def default_cache_dir() -> Path:
    """``$INTELLILOG_CACHE_DIR``, else ``~/.cache/intellilog/compiled``."""
    raw = os.environ.get(CACHE_ENV, "").strip()
    return Path(raw).expanduser() if raw else Path.home() / ".cache" / "intellilog" / "compiled"


def _max_bytes() -> int:
    raw = os.environ.get(CACHE_MAX_ENV, "").strip()
    try:
        mb = float(raw) if raw else DEFAULT_MAX_MB
    except ValueError:
        raise ConfigError(
            f"{CACHE_MAX_ENV}={raw!r}: expected a number of MB (0: no limit)"
        ) from None
    if not mb >= 0:
        raise ConfigError(f"{CACHE_MAX_ENV}={raw!r}: must be >= 0 (0: no limit)")
    return int(mb * 1024 * 1024)


class FileObjectCache:
    """Object code in files under ``folder`` (None: :func:`default_cache_dir`), at most
    ``max_bytes`` of it (None: ``$INTELLILOG_CACHE_MAX_MB``, default 256 MB; 0: no limit)."""

    def __init__(self, folder: str | Path | None = None, max_bytes: int | None = None) -> None:
        self.folder = Path(folder) if folder is not None else default_cache_dir()
        self.max_bytes = _max_bytes() if max_bytes is None else int(max_bytes)

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
                with contextlib.suppress(OSError):  # recently used: kept longest
                    os.utime(path)
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
        self._trim(keep=path)
        return None

    def _trim(self, keep: Path) -> None:
        """Remove the least recently used files until the folder fits ``max_bytes``."""
        if self.max_bytes <= 0:
            return
        files = []
        for f in self.folder.glob("forest-*.o"):
            with contextlib.suppress(OSError):  # another process may remove it meanwhile
                st = f.stat()
                files.append((st.st_mtime, st.st_size, f))
        total = sum(size for _, size, _ in files)
        for _, size, f in sorted(files, key=lambda t: t[0]):
            if total <= self.max_bytes:
                break
            if f == keep:
                continue
            with contextlib.suppress(OSError):
                f.unlink()
                total -= size
                log.info("compiled-forest cache: removed %s (least recently used)", f.name)
