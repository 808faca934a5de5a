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
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from kernels.errors import ConfigError, ModelLoadError
from training.atomic import write_text_atomic

__all__ = [
    "ALIAS_RE",
    "DEFAULT_ROOT",
    "ENV_VAR",
    "MANIFEST",
    "Registry",
]

#: Environment variable naming the registry folder.
ENV_VAR = "MODEL_ARTIFACT_PATH"
#: Registry folder when :data:`ENV_VAR` is unset.
DEFAULT_ROOT = "./models"
#: Name of the metadata file inside every version folder.
MANIFEST = "manifest.json"
#: Valid alias names.
ALIAS_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}")

_VERSION_RE = re.compile(r"v([1-9][0-9]*)")
_ALIASES = "aliases.json"
_STAGING = ".staging"
_LOCK = ".lock"
_TRAIN_HINT = "run `intellilog train --data FILE --promote`"
_CHUNK = 1 << 20


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


def _fsync_dir(path: Path) -> None:
    """Flush a directory entry change (rename, create) to disk; best effort."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that readers see the old or the new content
    (:func:`training.atomic.write_text_atomic`: temp file in the same folder, fsync,
    ``os.replace``, fsync of the folder; a failure is one line naming the path)."""
    write_text_atomic(path, text)


def _who(by: str, reason: str) -> dict[str, str]:
    """The optional ``by``/``reason`` fields of a history entry."""
    return {k: v for k, v in (("by", by), ("reason", reason)) if v}


def _version_number(name: str) -> int | None:
    """``7`` for ``"v7"``, None for anything that is not a version name."""
    m = _VERSION_RE.fullmatch(name)
    return int(m.group(1)) if m else None


def _check_alias(alias: str) -> str:
    """Return ``alias`` if it is a valid alias name, else raise ConfigError."""
    if not isinstance(alias, str) or not ALIAS_RE.fullmatch(alias):
        raise ConfigError(
            f"bad alias name {alias!r}: use 1-32 characters, a lowercase letter first, "
            "then lowercase letters, digits, '_' or '-' (e.g. 'production', 'candidate')"
        )
    if _version_number(alias) is not None:
        raise ConfigError(
            f"bad alias name {alias!r}: it looks like a version number and would hide "
            "that version; pick a name such as 'production' or 'canary'"
        )
    return alias


class Registry:
    """A folder of immutable, checksummed model versions plus movable aliases.

    ``Registry(root)`` creates nothing until the first write; reading an empty or
    missing registry gives empty lists, and resolving any reference in it raises
    :class:`ModelLoadError` saying how to train a first model.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
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
        return f"Registry({str(self.root)!r})"

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
            _fsync_dir(self._versions_dir)
        return version

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
                    f"alias {alias!r} in {self.root} has no earlier version to roll back "
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

    def delete(self, ref: str) -> None:
        """Delete a version folder. Refuses (ConfigError) while an alias points to it.

        The folder is first renamed out of ``versions/`` (so it vanishes in one
        step), then removed. Its number is never handed out again.
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
            self._staging_dir.mkdir(parents=True, exist_ok=True)
            trash = self._staging_dir / f"deleted-{version}-{uuid.uuid4().hex}"
            os.rename(self._versions_dir / version, trash)
            _fsync_dir(self._versions_dir)
            state["deleted"][version] = _now()
            self._write_state(state)
        shutil.rmtree(trash, ignore_errors=True)

    # ------------------------------------------------------------------ reading

    def versions(self) -> list[str]:
        """Names of the published versions, sorted numerically (``v2`` before ``v10``)."""
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
        if not isinstance(ref, str):
            raise ModelLoadError(f"model reference must be a version or alias name, got {ref!r}")
        existing = self.versions()
        if _version_number(ref) is not None:
            if ref in existing:
                return ref
            state = self._read_state()
            if ref in state["deleted"]:
                raise ModelLoadError(
                    f"model {ref} was deleted from {self.root} on {state['deleted'][ref]}: "
                    f"use one of {self._known(existing, state)}"
                )
            raise self._unknown(ref, existing, state)
        state = self._read_state()
        target = state["aliases"].get(ref)
        if target is None:
            raise self._unknown(ref, existing, state)
        if target not in existing:
            raise ModelLoadError(
                f"alias {ref!r} in {self.root} points to {target}, whose folder "
                f"{self._versions_dir / target} is missing: promote an existing version "
                f"({', '.join(existing) or 'none'}) to {ref!r}"
            )
        return target

    def path(self, ref: str) -> Path:
        """Folder of the version ``ref`` resolves to."""
        return self._versions_dir / self.resolve(ref)

    def manifest(self, ref: str) -> dict[str, Any]:
        """The parsed ``manifest.json`` of a version (no checksum check: see :meth:`verify`)."""
        version = self.resolve(ref)
        file = self._versions_dir / version / MANIFEST
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
        """
        version = self.resolve(ref)
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
            p = PurePosixPath(rel) if isinstance(rel, str) else None
            if (
                p is None
                or p.is_absolute()
                or not p.parts
                or any(part in ("", ".", "..") for part in p.parts)
                or str(p) == MANIFEST
            ):
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
        """Exclusive advisory lock on ``<root>/.lock`` (threads and processes)."""
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
        for entries in state["history"].values():
            for h in entries:
                used += [
                    _version_number(str(h.get("version"))),
                    _version_number(str(h.get("previous"))),
                ]
        return max((n for n in used if n is not None), default=0) + 1

    def _read_state(self) -> dict[str, Any]:
        """Parsed ``aliases.json`` with all three sections present (empty if no file)."""
        try:
            text = self._aliases_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {"aliases": {}, "history": {}, "deleted": {}, "archived": {}}
        fix = (
            f"restore it from a backup, or delete it and promote a version again "
            f"(known versions: {', '.join(self.versions()) or 'none'})"
        )
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ModelLoadError(f"{self._aliases_file} is not valid JSON ({e}): {fix}") from e
        if not isinstance(data, dict):
            raise ModelLoadError(f"{self._aliases_file} is not a JSON object: {fix}")
        state: dict[str, Any] = {}
        for key in ("aliases", "history", "deleted", "archived"):
            value = data.get(key, {})
            if not isinstance(value, dict):
                raise ModelLoadError(f"{self._aliases_file}: {key!r} is not an object: {fix}")
            state[key] = value
        return state

    def _write_state(self, state: dict[str, Any]) -> None:
        """Atomically replace ``aliases.json`` (caller holds the lock)."""
        text = json.dumps(state, indent=2, sort_keys=True) + "\n"
        _atomic_write_text(self._aliases_file, text)

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
            return ModelLoadError(f"no model registered in {self.root}: {_TRAIN_HINT}")
        return ModelLoadError(
            f"unknown model {ref!r} in {self.root} ({self._known(existing, state)}): pass "
            "one of those, or train a new model"
        )
