"""The object-store side of the model registry (``s3://``, ``gs://``, ``memory://``, ...).

:class:`training.registry.Registry` keeps its logic; when ``MODEL_ARTIFACT_PATH`` is a
URL it reads and writes objects through :class:`RemoteStore` (fsspec) and loads models
from a verified local copy (:func:`default_cache`). This is the only module that
reaches fsspec (imported through :func:`training.optional.fsspec`). Layout under the URL::

    versions/vN/<files>               uploaded first
    versions/vN/manifest.json         uploaded last: a version without it is absent
    claims/vN                         created (create-only) before any upload, so two
                                      publishers never share a number
    aliases/<20-digit generation>.json   the alias state; one object per change

Why generations: object stores have no rename and no lock, so ``aliases.json`` cannot be
replaced under an flock as on a folder. A writer reads the highest generation ``G``,
applies its change and creates ``G + 1`` with a *create-only* write (fsspec's
``pipe_file(mode="create")``: ``If-None-Match: *`` on S3 through s3fs, an exclusive open
on ``memory://`` and local disks). When two writers race for ``G + 1`` exactly one
succeeds; the other gets ``FileExistsError`` and starts again from the new state, so no
history entry is lost. A PUT is atomic, so the highest generation that exists is always
complete. Compare-and-swap on one object (``If-Match`` on its ETag) would also work on
S3, but s3fs has no API for it (only raw ``put_object`` arguments, and it reports a
failed ``If-Match`` as a bare ``EINVAL``), while create-only is a portable fsspec mode.
A backend that silently ignores create-only would lose updates, so each store probes it
before its first create-only write (:meth:`RemoteStore.check_create_only`) and refuses to
write otherwise. Old generations are pruned, keeping the last :data:`KEEP_GENERATIONS`.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from kernels.errors import ConfigError, ModelLoadError
from training import optional

__all__ = [
    "CACHE_ENV",
    "KEEP_GENERATIONS",
    "RemoteStore",
    "default_cache",
    "is_url",
]

#: Environment variable naming the folder under which remote registries are cached.
CACHE_ENV = "INTELLILOG_REGISTRY_CACHE"
#: Alias generations kept in the store (older ones are deleted after a write).
KEEP_GENERATIONS = 100

_URL_RE = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://.*")
_GEN_RE = re.compile(r"([0-9]{20})\.json")
_ALIASES = "aliases"
_CLAIMS = "claims"
_PRUNE_EVERY = 20
_READ_TRIES = 3


def is_url(root: object) -> bool:
    """True for ``scheme://...`` strings: registries reached through fsspec."""
    return isinstance(root, str) and _URL_RE.fullmatch(root) is not None


def default_cache(url: str) -> Path:
    """``$INTELLILOG_REGISTRY_CACHE/<hash of url>``, else ``~/.cache/intellilog/registry/<hash>``.

    One folder per URL, so two registries never share cached versions.
    """
    raw = os.environ.get(CACHE_ENV, "").strip()
    base = Path(raw).expanduser() if raw else Path.home() / ".cache" / "intellilog" / "registry"
    return base / hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


class RemoteStore:
    """Objects below one URL: plain reads and writes, create-only writes, and the alias
    generations. Every failure other than "missing" / "exists" is one line naming the
    object (ModelLoadError when reading, ConfigError when writing)."""

    def __init__(self, url: str) -> None:
        fsspec = optional.fsspec(f"the model registry at {url}")
        scheme = url.split("://", 1)[0].lower()
        try:
            fs, base = fsspec.core.url_to_fs(
                url, use_listings_cache=False, skip_instance_cache=True
            )
        except ImportError as exc:
            extra = (
                "`intellilog[s3]`"
                if scheme in ("s3", "s3a")
                else f"the fsspec backend for {scheme}://"
            )
            raise ConfigError(
                f"MODEL_ARTIFACT_PATH {url!r} needs {extra}: {_one_line(exc)}"
            ) from None
        except Exception as exc:
            raise ConfigError(
                f"MODEL_ARTIFACT_PATH {url!r} is not a usable registry URL ({_one_line(exc)}): "
                "use a folder or a URL such as s3://bucket/prefix"
            ) from None
        self.url = url.rstrip("/")
        self.fs: Any = fs
        self.base = str(base).rstrip("/")
        if not self.base:
            raise ConfigError(
                f"MODEL_ARTIFACT_PATH {url!r} names no bucket or folder: use e.g. "
                "s3://bucket/models"
            )
        self._create_only_ok = False
        self._writes = 0

    def __repr__(self) -> str:
        return f"RemoteStore({self.url!r})"

    # ------------------------------------------------------------------ plain objects

    def where(self, rel: str) -> str:
        """The URL of the object ``rel`` (for messages)."""
        return f"{self.url}/{rel}"

    def _key(self, rel: str) -> str:
        """The store key of ``rel``; refuses a path that could leave the registry's prefix
        (``..``, an absolute path, NUL or a backslash), whatever name it was built from."""
        parts = rel.split("/")
        if (
            not rel
            or rel.startswith("/")
            or any(p in ("", ".", "..") for p in parts)
            or "\x00" in rel
            or "\\" in rel
        ):
            raise ModelLoadError(
                f"refusing object path {rel[:80]!r} under {self.url}: not a plain path "
                "inside the registry"
            )
        return f"{self.base}/{rel}"

    @contextmanager
    def _reading(self, rel: str) -> Iterator[None]:
        try:
            yield
        except (FileNotFoundError, ModelLoadError):  # ModelLoadError: a refused path
            raise
        except Exception as exc:
            raise ModelLoadError(
                f"cannot read {self.where(rel)} ({_one_line(exc)}): check the URL, the "
                "credentials (e.g. AWS_* variables) and that the bucket exists"
            ) from None

    @contextmanager
    def _writing(self, rel: str) -> Iterator[None]:
        try:
            yield
        except (FileExistsError, ModelLoadError):  # ModelLoadError: a refused path
            raise
        except Exception as exc:
            raise ConfigError(
                f"cannot write {self.where(rel)} ({_one_line(exc)}): check the URL, the "
                "credentials (e.g. AWS_* variables) and that the bucket exists and is writable"
            ) from None

    def read(self, rel: str) -> bytes:
        """The bytes of ``rel``; FileNotFoundError when it does not exist."""
        with self._reading(rel):
            return bytes(self.fs.cat_file(self._key(rel)))

    def write(self, rel: str, data: bytes, *, create: bool = False) -> None:
        """Write ``rel`` whole; with ``create``, FileExistsError if it already exists."""
        if create:
            self.check_create_only()
        with self._writing(rel):
            self.fs.pipe_file(self._key(rel), data, mode="create" if create else "overwrite")

    def upload(self, local: Path, rel: str) -> None:
        """Copy a local file to ``rel`` (overwriting)."""
        with self._writing(rel):
            self.fs.put_file(str(local), self._key(rel))

    def download(self, rel: str, local: Path) -> None:
        """Copy ``rel`` to a local file; FileNotFoundError when it does not exist."""
        with self._reading(rel):
            self.fs.get_file(self._key(rel), str(local))

    def find(self, prefix: str) -> list[str]:
        """Paths (relative to the URL) of every object below ``prefix``, sorted."""
        with self._reading(prefix):
            try:
                found = self.fs.find(self._key(prefix))
            except FileNotFoundError:
                return []
        head = self.base + "/"
        return sorted(str(p)[len(head) :] for p in found if str(p).startswith(head))

    def remove(self, rels: list[str]) -> None:
        """Delete objects, in the order given (missing ones are ignored)."""
        for rel in rels:
            with self._writing(rel), suppress(FileNotFoundError):
                self.fs.rm_file(self._key(rel))

    def check_create_only(self) -> None:
        """Refuse to write when the backend does not honour create-only writes (a second
        create of the same object must fail); checked once per store."""
        if self._create_only_ok:
            return
        rel = f"{_CLAIMS}/.probe-{uuid.uuid4().hex}"
        with self._writing(rel):
            self.fs.pipe_file(self._key(rel), b"probe", mode="create")
            try:
                self.fs.pipe_file(self._key(rel), b"again", mode="create")
            except FileExistsError:
                honoured = True
            except Exception:  # e.g. NotImplementedError of a backend without the mode
                honoured = False
            else:
                honoured = False
            self.fs.rm_file(self._key(rel))
        if not honoured:
            raise ConfigError(
                f"the store behind {self.url} does not support create-only writes "
                "(S3 If-None-Match), so alias changes cannot be made atomic: use AWS S3 or an "
                "S3-compatible server that supports conditional writes"
            )
        self._create_only_ok = True

    # ------------------------------------------------------------------ claims

    def claim(self, version: str) -> bool:
        """Reserve a version number; False when another publisher holds it."""
        try:
            self.write(f"{_CLAIMS}/{version}", b"", create=True)
        except FileExistsError:
            return False
        return True

    def claims(self) -> list[str]:
        """Version names that were ever claimed."""
        return [p.rsplit("/", 1)[-1] for p in self.find(_CLAIMS)]

    # ------------------------------------------------------------------ alias generations

    def generation_path(self, gen: int) -> str:
        return f"{_ALIASES}/{gen:020d}.json"

    def generations(self) -> list[int]:
        """The alias generations in the store, ascending (empty: no alias ever set)."""
        rel = _ALIASES
        with self._reading(rel):
            try:
                names = self.fs.ls(self._key(rel), detail=False)
            except FileNotFoundError:
                return []
        gens = []
        for name in names:
            m = _GEN_RE.fullmatch(str(name).rstrip("/").rsplit("/", 1)[-1])
            if m:
                gens.append(int(m.group(1)))
        return sorted(gens)

    def read_aliases(self) -> tuple[int, bytes | None]:
        """``(generation, bytes)`` of the newest alias state; ``(0, None)`` if none.

        Pruning can delete the generation just listed only after
        :data:`KEEP_GENERATIONS` newer ones were written; then the list is read again.
        """
        for _ in range(_READ_TRIES):
            gens = self.generations()
            if not gens:
                return 0, None
            try:
                return gens[-1], self.read(self.generation_path(gens[-1]))
            except FileNotFoundError:
                continue
        raise ModelLoadError(
            f"the aliases of {self.url} changed too fast to be read ({_READ_TRIES} tries): retry"
        )

    def write_aliases(self, gen: int, data: bytes) -> None:
        """Create generation ``gen``; FileExistsError when another writer made it first."""
        self.write(self.generation_path(gen), data, create=True)
        self._writes += 1
        if self._writes % _PRUNE_EVERY == 0:
            self._prune(gen)

    def _prune(self, newest: int) -> None:
        """Delete generations older than the last :data:`KEEP_GENERATIONS` (best effort)."""
        try:
            old = [g for g in self.generations() if g <= newest - KEEP_GENERATIONS]
            self.remove([self.generation_path(g) for g in old])
        except (ConfigError, ModelLoadError):
            pass  # a later write prunes again
