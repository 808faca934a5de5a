"""The model registry: numbered, checksummed, immutable model versions in a folder.

Layout under the root (``MODEL_ARTIFACT_PATH``, default ``./models``)::

    <root>/versions/v1/            one folder per version: the model files
    <root>/versions/v1/manifest.json   metadata + {"files": {relpath: sha256}}
    <root>/aliases.json            {"aliases": {"production": "v2"},
                                    "history": {"production": [{...}, ...]},
                                    "deleted": {"v4": "<ISO UTC>"},
                                    "archived": {"v3": {"at": ..., "reason": ...}}}
    <root>/.staging/stage-<hex>/   work folders that become versions on publish
    <root>/.lock                   advisory lock file taken by every writer

Life cycle: :meth:`Registry.stage` hands out an empty folder, the trainer writes
its files there, :meth:`Registry.publish` checksums them, writes
``manifest.json`` and renames the folder into ``versions/`` (one atomic
``rename``, so a reader never sees a half-published version).
:meth:`Registry.promote` points an alias at a verified version and
:meth:`Registry.rollback` undoes the last alias change.

Concurrency: readers take no lock. ``aliases.json`` is only ever replaced whole
(temp file in the same folder, ``fsync``, ``os.replace``), so a concurrent reader
sees the old or the new file, never a partial one. Writers (publish, promote,
rollback, delete) serialise on an ``flock`` of ``<root>/.lock`` so that version
numbers are unique and no alias-history update is lost, across threads and
processes on one machine (POSIX only; not for network file systems).

Version numbers are never reused: the next number is one above every version
that exists, was deleted, or appears in an alias history.

Remote registries: when the root is a URL (``s3://bucket/prefix``, ``gs://...``,
``memory://...``) the same class keeps its objects in that store through
:class:`training.registry_remote.RemoteStore` (which explains the layout and why alias
changes are create-only *generations*). Staging and loading happen in a local cache
(:attr:`Registry.root`, one folder per URL): a version is downloaded into it once, every
checksum checked, and a corrupted download is refused and fetched again. Writers take no
lock there; a writer that loses a race for the next alias generation runs again on the
new state (:func:`_optimistic`).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import os
import random
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, Concatenate, ParamSpec, TypeVar

from kernels.errors import ConfigError, ModelLoadError
from training.atomic import fsync_dir, write_text_atomic
from training.registry_remote import RemoteStore, default_cache, is_url

__all__ = [
    "ALIAS_RE",
    "DEFAULT_ROOT",
    "ENV_VAR",
    "MANIFEST",
    "MAX_REF_LEN",
    "Registry",
    "check_ref",
]

#: Environment variable naming the registry folder.
ENV_VAR = "MODEL_ARTIFACT_PATH"
#: Registry folder when :data:`ENV_VAR` is unset.
DEFAULT_ROOT = "./models"
#: Name of the metadata file inside every version folder.
MANIFEST = "manifest.json"
#: Valid alias names.
ALIAS_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}")

#: The longest version or alias name accepted anywhere (routes, CLI, the registry).
MAX_REF_LEN = 64

_VERSION_RE = re.compile(r"v([1-9][0-9]{0,17})")
_ALIASES = "aliases.json"
_STAGING = ".staging"
_LOCK = ".lock"
_TRAIN_HINT = "run `intellilog train --data FILE --promote`"
_CHUNK = 1 << 20
#: Tries of a remote write that loses the race for the next alias generation.
_ATTEMPTS = 10

log = logging.getLogger("intellilog.registry")

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _now() -> str:
    """The current time as ISO 8601 UTC with milliseconds, e.g. ``2024-05-01T12:00:00.000Z``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _who(by: str, reason: str) -> dict[str, str]:
    """The optional ``by``/``reason`` fields of a history entry."""
    return {k: v for k, v in (("by", by), ("reason", reason)) if v}


def _version_number(name: str) -> int | None:
    """``7`` for ``"v7"``, None for anything that is not a version name."""
    m = _VERSION_RE.fullmatch(name)
    return int(m.group(1)) if m else None


def _shown(ref: object) -> str:
    """``repr(ref)`` cut to a length that fits one line of an error message."""
    text = repr(ref)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(str(ref))} characters)"


def check_ref(ref: object) -> str:
    """Return ``ref`` if it can name a version (``v7``) or an alias, else raise
    ModelLoadError. Names reach file paths (``versions/<name>``) and object keys, so only
    these two ASCII shapes pass: no ``/``, ``..``, NUL, look-alike letters or long text."""
    if (
        isinstance(ref, str)
        and len(ref) <= MAX_REF_LEN
        and (_version_number(ref) is not None or ALIAS_RE.fullmatch(ref))
    ):
        return ref
    raise ModelLoadError(
        f"bad model reference {_shown(ref)}: name a version (v1, v2, ...) or an alias "
        "(lowercase letters, digits, '_' or '-', a letter first, at most 32 characters)"
    )


def _check_alias(alias: str) -> str:
    """Return ``alias`` if it is a valid alias name, else raise ConfigError."""
    if not isinstance(alias, str) or not ALIAS_RE.fullmatch(alias):
        raise ConfigError(
            f"bad alias name {_shown(alias)}: use 1-32 characters, a lowercase letter first, "
            "then lowercase letters, digits, '_' or '-' (e.g. 'production', 'candidate')"
        )
    if _version_number(alias) is not None:
        raise ConfigError(
            f"bad alias name {alias!r}: it looks like a version number and would hide "
            "that version; pick a name such as 'production' or 'canary'"
        )
    return alias


def _check_rel(rel: object) -> PurePosixPath | None:
    """``rel`` as a path inside a version folder, or None when it is not one."""
    p = PurePosixPath(rel) if isinstance(rel, str) else None
    if (
        p is None
        or p.is_absolute()
        or not p.parts
        or any(part in ("", ".", "..") for part in p.parts)
        or str(p) == MANIFEST
    ):
        return None
    return p


class _Conflict(ConfigError):
    """Another writer created the alias generation this one meant to write."""


def _optimistic(
    method: Callable[Concatenate[Registry, _P], _R],
) -> Callable[Concatenate[Registry, _P], _R]:
    """Run a writer again, on the new state, when it loses the race for the next alias
    generation of a remote registry (a local registry runs it once, under its flock).

    Each run starts a transaction: the first alias state it reads fixes the generation
    its write must follow, so a change made by anyone after that read is a conflict.
    """

    @functools.wraps(method)
    def run(self: Registry, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        if self._remote is None:
            return method(self, *args, **kwargs)
        for attempt in range(_ATTEMPTS):
            self._txn.active, self._txn.base = True, None
            try:
                return method(self, *args, **kwargs)
            except _Conflict:
                time.sleep(random.uniform(0.0, min(0.02 * 2**attempt, 1.0)))
            finally:
                self._txn.active = False
        raise ConfigError(
            f"{method.__name__} gave up: the aliases of {self.location} changed {_ATTEMPTS} "
            "times while it ran (other writers are busy): retry the command"
        )

    return run


class Registry:
    """A folder of immutable, checksummed model versions plus movable aliases.

    ``Registry(root)`` creates nothing until the first write; reading an empty or
    missing registry gives empty lists, and resolving any reference in it raises
    :class:`ModelLoadError` saying how to train a first model.

    ``root`` may be a URL (``s3://bucket/prefix``): then :attr:`root` is the local cache
    folder (``cache``, default :func:`training.registry_remote.default_cache`) that
    versions are staged in and loaded from, and :attr:`location` is the URL.
    """

    def __init__(self, root: str | Path, *, cache: str | Path | None = None) -> None:
        self._remote: RemoteStore | None = None
        self._txn = threading.local()
        if is_url(root):
            self._remote = RemoteStore(str(root))
            self.location = self._remote.url
            root = cache if cache is not None else default_cache(self.location)
        self.root = Path(root)
        if self._remote is None:
            self.location = str(self.root)
        if self.root.exists() and not self.root.is_dir():
            if self._remote is not None:
                raise ConfigError(
                    f"registry cache path {str(self.root)!r} is a file, not a folder: set "
                    "INTELLILOG_REGISTRY_CACHE to a writable folder"
                )
            raise ConfigError(
                f"model registry path {str(self.root)!r} is a file, not a folder: set "
                f"{ENV_VAR} to a folder (it is created if missing)"
            )
        self._versions_dir = self.root / "versions"
        self._aliases_file = self.root / _ALIASES
        self._staging_dir = self.root / _STAGING

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Registry:
        """The registry at ``$MODEL_ARTIFACT_PATH`` (default ``./models``)."""
        env = os.environ if environ is None else environ
        value = env.get(ENV_VAR)
        if value is None:
            value = DEFAULT_ROOT
        elif not value.strip():
            raise ConfigError(
                f"{ENV_VAR} is set but empty: set it to the model folder, or unset it "
                f"to use {DEFAULT_ROOT}"
            )
        return cls(value)

    def __repr__(self) -> str:
        return f"Registry({self.location!r})"

    @property
    def is_remote(self) -> bool:
        """True when the registry lives in an object store (its root was a URL)."""
        return self._remote is not None

    def alias_token(self) -> float | None:
        """A value that changes whenever an alias changes (None: no alias state yet).

        A folder: the modification time of ``aliases.json``; a remote registry: the
        newest alias generation (one listing of ``aliases/``), so a watcher polls it.
        """
        if self._remote is not None:
            gens = self._remote.generations()
            return float(gens[-1]) if gens else None
        try:
            return (self.root / _ALIASES).stat().st_mtime_ns / 1e9
        except OSError:
            return None

    # ------------------------------------------------------------------ writing

    def stage(self) -> Path:
        """A fresh, empty folder under ``<root>/.staging/`` to write model files into.

        Pass it to :meth:`publish` when done, or to :meth:`discard` to drop it.
        """
        self._staging_dir.mkdir(parents=True, exist_ok=True)
        path = self._staging_dir / f"stage-{uuid.uuid4().hex}"
        os.mkdir(path)  # mode 0777 minus umask, so other users can read the version
        return path

    def discard(self, staging: str | Path) -> None:
        """Delete a staging folder returned by :meth:`stage` (e.g. after a failed training)."""
        path = self._check_staging(staging)
        shutil.rmtree(path, ignore_errors=True)

    def publish(self, staging: str | Path, manifest: Mapping[str, Any]) -> str:
        """Turn a staging folder into the next version and return its name (``"v3"``).

        A copy of ``manifest`` gets ``version``, ``created_at`` (ISO UTC) and
        ``files`` (``{relative posix path: sha256}`` of every file in the folder;
        those three keys are overwritten if present) and is written as
        ``manifest.json`` (strict JSON: NaN/inf are refused). The folder is then
        renamed into ``versions/`` in one step. No alias is changed.

        Remote: the number is claimed first (a create-only ``claims/vN``), every file
        is uploaded, then the manifest last; the staging folder becomes the cached copy.
        """
        path = self._check_staging(staging)
        files = self._hash_tree(path, context=f"staging folder {path}")
        if not files:
            raise ConfigError(
                f"staging folder {path} holds no files: write the model files into it "
                "before publish()"
            )
        meta = dict(manifest)
        meta["files"] = files
        if self._remote is not None:
            return self._publish_remote(self._remote, path, meta)
        with self._lock():
            state = self._read_state()
            self._versions_dir.mkdir(parents=True, exist_ok=True)
            n = self._next_number(state)
            while True:
                version = f"v{n}"
                meta["version"] = version
                meta["created_at"] = _now()
                try:
                    text = json.dumps(meta, indent=2, sort_keys=True, allow_nan=False)
                except (TypeError, ValueError) as e:
                    raise ConfigError(
                        f"model manifest is not JSON-serialisable ({e}): pass plain "
                        "dicts, lists, str, int and finite floats (use None for NaN)"
                    ) from e
                self._write_manifest(path / MANIFEST, text)
                target = self._versions_dir / version
                try:
                    os.rename(path, target)
                except OSError:
                    if target.exists():  # a writer that ignores the lock took the number
                        n += 1
                        continue
                    raise
                break
            fsync_dir(self._versions_dir)
        return version

    @_optimistic
    def promote(
        self, ref: str, alias: str = "production", *, by: str = "", reason: str = ""
    ) -> str | None:
        """Point ``alias`` at the version ``ref`` names, after verifying its checksums.

        Returns the version the alias pointed to before (None if it was unset). The
        change is recorded in the alias history (with ``by`` and ``reason`` when given);
        promoting the version the alias already points to changes and records nothing.
        A promoted version is no longer archived.
        """
        _check_alias(alias)
        with self._lock():
            version = self.resolve(ref)
            self.verify(version)
            state = self._read_state()
            previous = state["aliases"].get(alias)
            if previous == version:
                return previous
            state["archived"].pop(version, None)
            self._set_alias(state, alias, version, previous, "promote", by=by, reason=reason)
        return previous

    @_optimistic
    def unset(self, alias: str, *, by: str = "", reason: str = "") -> str | None:
        """Remove ``alias`` (e.g. ``candidate`` once its experiment ended); return the
        version it pointed to (None if it was unset). Recorded in the alias history."""
        _check_alias(alias)
        with self._lock():
            state = self._read_state()
            previous = state["aliases"].pop(alias, None)
            if previous is None:
                return None
            state["history"].setdefault(alias, []).append(
                {"version": None, "previous": previous, "at": _now(), "action": "unset"}
                | _who(by, reason)
            )
            self._write_state(state)
        return previous

    @_optimistic
    def archive(self, ref: str, reason: str, *, by: str = "") -> str:
        """Mark a version archived (a candidate that lost, a model that was replaced):
        it stays on disk and can be promoted again, which clears the mark. Refused while
        an alias other than history points to it."""
        with self._lock():
            version = self.resolve(ref)
            state = self._read_state()
            holders = sorted(a for a, v in state["aliases"].items() if v == version)
            if holders:
                raise ConfigError(
                    f"refusing to archive {version}: alias(es) {', '.join(holders)} point to it"
                )
            state["archived"][version] = {"at": _now(), "reason": reason} | _who(by, "")
            self._write_state(state)
        return version

    def archived(self) -> dict[str, dict[str, Any]]:
        """``{version: {"at", "reason", ["by"]}}`` of the archived versions."""
        return {v: dict(a) for v, a in self._read_state()["archived"].items()}

    @_optimistic
    def rollback(self, alias: str = "production", *, by: str = "", reason: str = "") -> str:
        """Move ``alias`` back to the version it had before its last change; return it.

        The target is verified first. Two rollbacks in a row toggle between the
        last two versions (like ``kubectl rollout undo``); to go further back,
        :meth:`promote` an explicit version. Raises :class:`ModelLoadError` when the
        alias has no earlier version.
        """
        _check_alias(alias)
        with self._lock():
            state = self._read_state()
            history = state["history"].get(alias, [])
            current = state["aliases"].get(alias)
            target: Any = None
            if history and "previous" in history[-1]:
                target = history[-1]["previous"]
            elif len(history) >= 2:  # entries written without "previous"
                target = history[-2].get("version")
            if not isinstance(target, str) or current is None:
                raise ModelLoadError(
                    f"alias {alias!r} in {self.location} has no earlier version to roll back "
                    f"to (history: {[h.get('version') for h in history]}): promote a "
                    f"version explicitly: `intellilog models promote VERSION --alias {alias}`"
                )
            if target in state["deleted"]:
                raise ModelLoadError(
                    f"cannot roll {alias!r} back to {target}: that version was deleted "
                    f"on {state['deleted'][target]}; promote another version from "
                    f"{self.versions()}"
                )
            self.verify(target)
            state["archived"].pop(target, None)
            self._set_alias(state, alias, target, current, "rollback", by=by, reason=reason)
        return target

    @_optimistic
    def delete(self, ref: str) -> None:
        """Delete a version folder. Refuses (ConfigError) while an alias points to it.

        The folder is first renamed out of ``versions/`` (so it vanishes in one
        step), then removed. Its number is never handed out again. Remote: the deletion
        is recorded first (so no alias can be pointed at it any more), then the manifest
        and the files are removed.
        """
        with self._lock():
            version = self.resolve(ref)
            state = self._read_state()
            holders = sorted(a for a, v in state["aliases"].items() if v == version)
            if holders:
                raise ConfigError(
                    f"refusing to delete {version}: alias(es) {', '.join(holders)} point "
                    f"to it; promote another version to {holders[0]!r} first"
                )
            if self._remote is not None:
                state["deleted"][version] = _now()
                self._write_state(state)
                self._remote.remove(self._remote_files(self._remote, version))
                shutil.rmtree(self._versions_dir / version, ignore_errors=True)
                return
            self._staging_dir.mkdir(parents=True, exist_ok=True)
            trash = self._staging_dir / f"deleted-{version}-{uuid.uuid4().hex}"
            os.rename(self._versions_dir / version, trash)
            fsync_dir(self._versions_dir)
            state["deleted"][version] = _now()
            self._write_state(state)
        shutil.rmtree(trash, ignore_errors=True)

    # ------------------------------------------------------------------ reading

    def versions(self) -> list[str]:
        """Names of the published versions, sorted numerically (``v2`` before ``v10``)."""
        if self._remote is not None:
            deleted = self._read_state()["deleted"]
            return [v for v in self._remote_versions(self._remote) if v not in deleted]
        try:
            entries = list(os.scandir(self._versions_dir))
        except FileNotFoundError:
            return []
        found = [
            (n, e.name)
            for e in entries
            if (n := _version_number(e.name)) is not None and e.is_dir(follow_symlinks=False)
        ]
        return [name for _, name in sorted(found)]

    def aliases(self) -> dict[str, str]:
        """``{alias: version}`` for every alias set."""
        return dict(self._read_state()["aliases"])

    def history(self, alias: str = "production") -> list[dict[str, Any]]:
        """Changes of ``alias``, oldest first: ``{"version", "previous", "at", "action"}``."""
        _check_alias(alias)
        return [dict(h) for h in self._read_state()["history"].get(alias, [])]

    def resolve(self, ref: str) -> str:
        """The version a version name or alias refers to.

        Raises :class:`ModelLoadError` for anything unknown, naming the versions and
        aliases that do exist (or how to train a first model when there are none).
        """
        check_ref(ref)
        existing = self.versions()
        if _version_number(ref) is not None:
            if ref in existing:
                return ref
            state = self._read_state()
            if ref in state["deleted"]:
                raise ModelLoadError(
                    f"model {ref} was deleted from {self.location} on {state['deleted'][ref]}: "
                    f"use one of {self._known(existing, state)}"
                )
            raise self._unknown(ref, existing, state)
        state = self._read_state()
        target = state["aliases"].get(ref)
        if target is None:
            raise self._unknown(ref, existing, state)
        if target not in existing:
            raise ModelLoadError(
                f"alias {ref!r} in {self.location} points to {target}, whose folder "
                f"{self._version_where(target)} is missing: promote an existing version "
                f"({', '.join(existing) or 'none'}) to {ref!r}"
            )
        return target

    def path(self, ref: str) -> Path:
        """Folder of the version ``ref`` resolves to (remote: its verified local copy,
        downloaded first when this machine has none)."""
        if self._remote is not None:
            return self._fetch(self._remote, self.resolve(ref))
        return self._versions_dir / self.resolve(ref)

    def manifest(self, ref: str) -> dict[str, Any]:
        """The parsed ``manifest.json`` of a version (no checksum check: see :meth:`verify`)."""
        version = self.resolve(ref)
        file = self._versions_dir / version / MANIFEST
        if self._remote is not None and not file.is_file():
            return self._remote_manifest(self._remote, version)[0]
        try:
            text = file.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ModelLoadError(
                f"model {version} has no {MANIFEST} ({file}): the folder is incomplete or "
                f"was tampered with; delete it (Registry.delete({version!r})) and publish "
                "the model again"
            ) from None
        except OSError as e:
            raise ModelLoadError(f"cannot read {file}: {e}; check the file permissions") from e
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ModelLoadError(
                f"model {version} is corrupted: {file} is not valid JSON ({e}); delete the "
                "version and publish the model again"
            ) from e
        if not isinstance(data, dict):
            raise ModelLoadError(
                f"model {version} is corrupted: {file} holds a {type(data).__name__}, not "
                "a JSON object; delete the version and publish the model again"
            )
        return data

    def verify(self, ref: str) -> dict[str, Any]:
        """Recompute every checksum of a version; return its manifest if all match.

        Raises :class:`ModelLoadError` naming the first problem: manifest missing or
        not JSON, manifest for another version, a listed file missing or with
        another SHA-256, a path outside the folder, or a file in the folder that
        the manifest does not list.

        Remote: the checks run on the local copy, downloaded first when missing (see
        :meth:`_fetch`); a local copy that fails them is dropped and downloaded again.
        """
        version = self.resolve(ref)
        if self._remote is not None:
            self._fetch(self._remote, version)
            try:
                return self._verify_folder(version)
            except ModelLoadError as exc:
                log.warning(
                    "cached copy of model %s is damaged (%s): downloading it again", version, exc
                )
                shutil.rmtree(self._versions_dir / version, ignore_errors=True)
                self._fetch(self._remote, version)
        return self._verify_folder(version)

    def _verify_folder(self, version: str) -> dict[str, Any]:
        """:meth:`verify` of the folder ``versions/<version>`` under :attr:`root`."""
        meta = self.manifest(version)
        folder = self._versions_dir / version
        fix = (
            f"restore the folder from a backup, or delete it (Registry.delete({version!r})) "
            "and publish the model again"
        )
        bad = f"model {version} is corrupted"
        if meta.get("version") != version:
            raise ModelLoadError(
                f"{bad}: its {MANIFEST} says version {meta.get('version')!r}; {fix}"
            )
        files = meta.get("files")
        if not isinstance(files, dict) or not files:
            raise ModelLoadError(f"{bad}: {MANIFEST} lists no files; {fix}")
        for rel, expected in files.items():
            p = _check_rel(rel)
            if p is None:
                raise ModelLoadError(f"{bad}: {MANIFEST} lists an invalid file path {rel!r}; {fix}")
            file = folder.joinpath(*p.parts)
            if file.is_symlink():
                raise ModelLoadError(f"{bad}: file {rel} is a symbolic link; {fix}")
            if not file.is_file():
                raise ModelLoadError(f"{bad}: file {rel} is missing; {fix}")
            got = _sha256(file)
            if got != expected:
                raise ModelLoadError(
                    f"{bad}: file {rel} checksum mismatch (expected {expected}, got {got}); {fix}"
                )
        present = self._list_tree(folder, context=f"model {version}")
        extra = sorted(set(present) - set(files) - {MANIFEST})
        if extra:
            raise ModelLoadError(f"{bad}: file {extra[0]} is not listed in its {MANIFEST}; {fix}")
        return meta

    # ------------------------------------------------------------------ internals

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """Exclusive advisory lock on ``<root>/.lock`` (threads and processes).

        Remote: nothing to take (an object store has no lock); the create-only alias
        generations and version claims keep writers apart instead.
        """
        if self._remote is not None:
            yield
            return
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / _LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def _check_staging(self, staging: str | Path) -> Path:
        """``staging`` as a Path, if it is a folder made by :meth:`stage`."""
        path = Path(staging)
        if path.parent.resolve() != self._staging_dir.resolve() or not path.name.startswith(
            "stage-"
        ):
            raise ConfigError(
                f"{path} is not a staging folder of {self}: get one from Registry.stage() "
                "and write the model files into it"
            )
        if not path.is_dir():
            raise ConfigError(
                f"staging folder {path} does not exist (already published or discarded?): "
                "get a new one from Registry.stage()"
            )
        return path

    @staticmethod
    def _list_tree(folder: Path, context: str) -> list[str]:
        """Relative posix paths of every file below ``folder``; symlinks are refused."""
        out: list[str] = []
        for dirpath, dirnames, filenames in os.walk(folder):
            here = Path(dirpath)
            for name in sorted(dirnames) + sorted(filenames):
                if (here / name).is_symlink():
                    rel = (here / name).relative_to(folder).as_posix()
                    raise ModelLoadError(
                        f"{context} holds a symbolic link {rel}: copy the real file in instead"
                    )
            out.extend((here / f).relative_to(folder).as_posix() for f in filenames)
        return sorted(out)

    def _hash_tree(self, folder: Path, context: str) -> dict[str, str]:
        """``{relpath: sha256}`` of every file in a staging folder except the manifest."""
        try:
            names = self._list_tree(folder, context)
        except ModelLoadError as e:
            raise ConfigError(str(e)) from None
        return {rel: _sha256(folder / rel) for rel in names if rel != MANIFEST}

    @staticmethod
    def _write_manifest(path: Path, text: str) -> None:
        """Write and fsync the manifest inside the (not yet visible) staging folder."""
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    def _next_number(self, state: dict[str, Any]) -> int:
        """One above every version that exists, was deleted or is in an alias history."""
        used = [_version_number(v) for v in self.versions()]
        used += [_version_number(v) for v in state["deleted"]]
        used += [_version_number(v) for v in state["aliases"].values()]
        if self._remote is not None:
            used += [_version_number(v) for v in self._remote.claims()]
        for entries in state["history"].values():
            for h in entries:
                used += [
                    _version_number(str(h.get("version"))),
                    _version_number(str(h.get("previous"))),
                ]
        return max((n for n in used if n is not None), default=0) + 1

    def _read_state(self) -> dict[str, Any]:
        """Parsed ``aliases.json`` with all three sections present (empty if no file).

        Remote: the newest alias generation; inside a writer (:func:`_optimistic`) the
        first generation read is the one the write must follow.
        """
        where: str | Path = self._aliases_file
        if self._remote is not None:
            gen, raw = self._remote.read_aliases()
            if getattr(self._txn, "active", False) and self._txn.base is None:
                self._txn.base = gen
            if raw is None:
                return {"aliases": {}, "history": {}, "deleted": {}, "archived": {}}
            where = self._remote.where(self._remote.generation_path(gen))
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ModelLoadError(
                    f"{where} is not valid JSON ({e}): restore it from a backup"
                ) from None
        else:
            try:
                text = self._aliases_file.read_text(encoding="utf-8")
            except FileNotFoundError:
                return {"aliases": {}, "history": {}, "deleted": {}, "archived": {}}

        def fix() -> str:  # built only for an error: it lists the versions
            listed = (
                self._remote_versions(self._remote) if self._remote is not None else self.versions()
            )
            return (
                f"restore it from a backup, or delete it and promote a version again "
                f"(known versions: {', '.join(listed) or 'none'})"
            )

        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ModelLoadError(f"{where} is not valid JSON ({e}): {fix()}") from e
        if not isinstance(data, dict):
            raise ModelLoadError(f"{where} is not a JSON object: {fix()}")
        state: dict[str, Any] = {}
        for key in ("aliases", "history", "deleted", "archived"):
            value = data.get(key, {})
            if not isinstance(value, dict):
                raise ModelLoadError(f"{where}: {key!r} is not an object: {fix()}")
            state[key] = value
        return state

    def _write_state(self, state: dict[str, Any]) -> None:
        """Atomically replace ``aliases.json`` (caller holds the lock).

        Remote: create the generation after the one this writer read first; losing
        that race raises :class:`_Conflict` and :func:`_optimistic` runs the writer again.
        """
        text = json.dumps(state, indent=2, sort_keys=True) + "\n"
        if self._remote is not None:
            base = self._txn.base if getattr(self._txn, "active", False) else None
            if base is None:
                base = self._remote.read_aliases()[0]
            try:
                self._remote.write_aliases(base + 1, text.encode("utf-8"))
            except FileExistsError:
                raise _Conflict(
                    f"the aliases of {self.location} changed while this change was being "
                    "made: retry"
                ) from None
            self._txn.base = base + 1
            return
        write_text_atomic(self._aliases_file, text)

    def _set_alias(
        self,
        state: dict[str, Any],
        alias: str,
        version: str,
        previous: str | None,
        action: str,
        *,
        by: str = "",
        reason: str = "",
    ) -> None:
        """Point ``alias`` at ``version``, append to its history, write the state."""
        state["aliases"][alias] = version
        state["history"].setdefault(alias, []).append(
            {"version": version, "previous": previous, "at": _now(), "action": action}
            | _who(by, reason)
        )
        self._write_state(state)

    def _known(self, existing: list[str], state: dict[str, Any]) -> str:
        """Human list of what can be referenced."""
        aliases = ", ".join(f"{a} -> {v}" for a, v in sorted(state["aliases"].items()))
        return f"versions: {', '.join(existing) or 'none'}; aliases: {aliases or 'none'}"

    def _unknown(self, ref: str, existing: list[str], state: dict[str, Any]) -> ModelLoadError:
        """The error for a reference that names nothing."""
        if not existing:
            return ModelLoadError(f"no model registered in {self.location}: {_TRAIN_HINT}")
        return ModelLoadError(
            f"unknown model {ref!r} in {self.location} ({self._known(existing, state)}): pass "
            "one of those, or train a new model"
        )

    # ------------------------------------------------------------------ remote registries

    def _version_where(self, version: str) -> str:
        """Where a version's files live, for messages."""
        if self._remote is not None:
            return self._remote.where(f"versions/{version}")
        return str(self._versions_dir / version)

    @staticmethod
    def _remote_versions(remote: RemoteStore) -> list[str]:
        """Versions whose manifest is in the store (a version without one is absent)."""
        found = []
        for key in remote.find("versions"):
            parts = key.split("/")
            if len(parts) == 3 and parts[2] == MANIFEST:
                n = _version_number(parts[1])
                if n is not None:
                    found.append((n, parts[1]))
        return [name for _, name in sorted(found)]

    @staticmethod
    def _remote_files(remote: RemoteStore, version: str) -> list[str]:
        """The objects of a version, its manifest first (removing it hides the version)."""
        keys = remote.find(f"versions/{version}")
        manifest = f"versions/{version}/{MANIFEST}"
        return sorted(keys, key=lambda k: (k != manifest, k))

    def _remote_manifest(self, remote: RemoteStore, version: str) -> tuple[dict[str, Any], bytes]:
        """The parsed manifest of a version in the store, and its bytes."""
        rel = f"versions/{version}/{MANIFEST}"
        where = remote.where(rel)
        fix = "delete the version and publish the model again"
        try:
            raw = remote.read(rel)
        except FileNotFoundError:
            raise ModelLoadError(
                f"model {version} has no {MANIFEST} ({where}): it was deleted or never "
                f"finished publishing; use one of {', '.join(self.versions()) or 'none'}"
            ) from None
        try:
            data = json.loads(raw.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ModelLoadError(
                f"model {version} is corrupted: {where} is not valid JSON ({e}); {fix}"
            ) from None
        if not isinstance(data, dict):
            raise ModelLoadError(
                f"model {version} is corrupted: {where} holds a {type(data).__name__}, not a "
                f"JSON object; {fix}"
            )
        return data, raw

    def _publish_remote(self, remote: RemoteStore, path: Path, meta: dict[str, Any]) -> str:
        """:meth:`publish` into the store: claim a number, upload the files, then the
        manifest; the staging folder becomes this machine's cached copy."""
        try:  # refuse a manifest that cannot be written before a number is used up
            json.dumps(meta, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ConfigError(
                f"model manifest is not JSON-serialisable ({e}): pass plain "
                "dicts, lists, str, int and finite floats (use None for NaN)"
            ) from e
        n = self._next_number(self._read_state())
        while not remote.claim(f"v{n}"):
            n += 1  # another publisher holds it
        version = f"v{n}"
        meta["version"] = version
        meta["created_at"] = _now()
        text = json.dumps(meta, indent=2, sort_keys=True, allow_nan=False)
        uploaded: list[str] = []
        try:
            for rel in sorted(meta["files"]):
                key = f"versions/{version}/{rel}"
                remote.upload(path / rel, key)
                uploaded.append(key)
            self._write_manifest(path / MANIFEST, text)
            remote.write(f"versions/{version}/{MANIFEST}", text.encode("utf-8"), create=True)
        except BaseException:
            with contextlib.suppress(Exception):  # the claim stays: the number is spent
                remote.remove(uploaded)
            (path / MANIFEST).unlink(missing_ok=True)
            raise
        self._versions_dir.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(path, self._versions_dir / version)
        except OSError:  # no local copy: the first load downloads it
            shutil.rmtree(path, ignore_errors=True)
        return version

    def _fetch(self, remote: RemoteStore, version: str) -> Path:
        """This machine's copy of a version, downloaded (and every checksum checked)
        when missing. A file whose SHA-256 differs from the manifest's is downloaded once
        more; when it differs again the version is refused and nothing is cached."""
        dest = self._versions_dir / version
        if (dest / MANIFEST).is_file():
            return dest
        meta, raw = self._remote_manifest(remote, version)
        bad = f"model {version} in {self.location} is corrupted"
        fix = (
            "restore its objects from a backup, or delete the version "
            f"(Registry.delete({version!r})) and publish the model again"
        )
        files = meta.get("files")
        if meta.get("version") != version:
            raise ModelLoadError(
                f"{bad}: its {MANIFEST} says version {meta.get('version')!r}; {fix}"
            )
        if not isinstance(files, dict) or not files:
            raise ModelLoadError(f"{bad}: {MANIFEST} lists no files; {fix}")
        for rel in files:
            if _check_rel(rel) is None:
                raise ModelLoadError(f"{bad}: {MANIFEST} lists an invalid file path {rel!r}; {fix}")
        prefix = f"versions/{version}/"
        present = {k[len(prefix) :] for k in remote.find(f"versions/{version}")}
        extra = sorted(present - set(files) - {MANIFEST})
        if extra:
            raise ModelLoadError(f"{bad}: object {extra[0]} is not listed in its {MANIFEST}; {fix}")
        self._staging_dir.mkdir(parents=True, exist_ok=True)
        problem = ""
        for attempt in (1, 2):
            tmp = self._staging_dir / f"fetch-{version}-{uuid.uuid4().hex}"
            try:
                for rel, expected in files.items():
                    target = tmp.joinpath(*PurePosixPath(rel).parts)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    try:
                        remote.download(prefix + rel, target)
                    except FileNotFoundError:
                        raise ModelLoadError(f"{bad}: object {rel} is missing; {fix}") from None
                    got = _sha256(target)
                    if got != expected:
                        problem = f"file {rel} checksum mismatch (expected {expected}, got {got})"
                        break
                else:
                    (tmp / MANIFEST).write_bytes(raw)
                    self._versions_dir.mkdir(parents=True, exist_ok=True)
                    if dest.exists() and not (dest / MANIFEST).is_file():
                        shutil.rmtree(dest, ignore_errors=True)  # a damaged copy
                    try:
                        os.rename(tmp, dest)
                    except OSError:
                        if not (dest / MANIFEST).is_file():  # not a concurrent fetch
                            raise
                    return dest
                log.warning("download %d of model %s refused: %s", attempt, version, problem)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        raise ModelLoadError(f"{bad}: {problem} in two downloads; {fix}")
