"""Output files that appear whole or not at all.

Every file a command writes for a user (scores, reject files, datasets, reports, the
registry's aliases) is written to a temporary file in the destination's folder, flushed
to disk (``fsync``) and only then renamed over the destination; the folder is fsynced
after the rename. A reader therefore finds the previous complete file, the new complete
file, or nothing; never a part. On any failure the temporary file is removed and the
error is one line naming the destination and the cause in words ("no space left on
device", "permission denied", ...). A process killed outright can leave a hidden
``.NAME.XXXXXXXX.tmp`` beside the destination; it is never mistaken for an output.

The temporary file lives in the same folder so that the rename stays on one file system,
where POSIX makes it atomic.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from kernels.errors import DataError

__all__ = [
    "AtomicOutput",
    "atomic_output",
    "describe_os_error",
    "fsync_dir",
    "output_error",
    "write_text_atomic",
]

_WORDS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "read-only file system",
    errno.EISDIR: "it is a folder",
    errno.EFBIG: "file too large for the file system",
    errno.EIO: "input/output error (a failing disk or a lost network mount)",
    errno.ENAMETOOLONG: "file name too long",
    errno.EMFILE: "too many open files",
    errno.ENFILE: "too many open files",
}


def describe_os_error(exc: OSError, path: str | Path) -> str:
    """The cause of ``exc`` (raised while writing ``path``) in a few plain words."""
    folder = Path(path).parent
    if exc.errno == errno.ENOENT:
        return f"the folder {folder} does not exist"
    if exc.errno == errno.ENOTDIR:
        return f"a part of {folder} is a file, not a folder"
    words = _WORDS.get(exc.errno or 0)
    if words is not None:
        return words
    text = exc.strerror or str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


def output_error(path: str | Path, exc: OSError) -> DataError:
    """The one-line error for a failed write of ``path``."""
    return DataError(f"{path}: cannot write: {describe_os_error(exc, path)}")


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable; best effort (some file systems refuse it, and
    the new file is already in place, so a failure here is no reason to report one)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicOutput:
    """One output being written: bytes go to :attr:`tmp`; :meth:`commit` puts them at
    :attr:`path`.

    Use :func:`atomic_output` for a single file. Several files that belong together
    (scores and their reject file) are each made an ``AtomicOutput``, all
    :meth:`finish`\\ ed (where a full disk shows up), then all :meth:`commit`\\ ted, so a
    late failure in one leaves none of them half written. Every method raises
    :class:`~kernels.errors.DataError` naming :attr:`path`, never a bare ``OSError``.

    ``make_parents`` creates missing folders above ``path`` (and removes those it
    created again if the output is discarded); without it a missing folder is an error.
    """

    def __init__(self, path: str | Path, *, make_parents: bool = False) -> None:
        self.path = Path(path)
        self._made: list[Path] = []  # folders created here, deepest last
        self._done = False
        if self.path.is_dir():
            raise DataError(f"{self.path}: cannot write: it is a folder")
        folder = self.path.parent
        try:
            if make_parents:
                missing = [p for p in (folder, *folder.parents) if not p.exists()]
                for p in reversed(missing):
                    p.mkdir(exist_ok=True)
                    self._made.append(p)
            elif not folder.is_dir():
                code = errno.ENOTDIR if folder.exists() else errno.ENOENT
                raise OSError(code, os.strerror(code), str(folder))
            self.tmp = folder / f".{self.path.name}.{secrets.token_hex(4)}.tmp"
            # O_EXCL reserves the name; 0666 minus the umask, like any new file
            os.close(os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except OSError as exc:
            self._remove_folders()
            raise output_error(self.path, exc) from None

    def finish(self) -> None:
        """Flush the finished temporary file to disk (call after closing its writer)."""
        try:
            fd = os.open(self.tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise output_error(self.path, exc) from None

    def commit(self) -> None:
        """Rename the temporary file over :attr:`path`, then fsync the folder."""
        try:
            os.replace(self.tmp, self.path)
        except OSError as exc:
            raise output_error(self.path, exc) from None
        self._done = True
        fsync_dir(self.path.parent)

    def discard(self) -> None:
        """Remove the temporary file (and folders made for it); safe to call twice and
        after :meth:`commit` (then it does nothing)."""
        if self._done:
            return
        self._done = True
        with contextlib.suppress(OSError):
            os.unlink(self.tmp)
        self._remove_folders()

    def _remove_folders(self) -> None:
        for p in reversed(self._made):
            with contextlib.suppress(OSError):
                p.rmdir()  # only if still empty
        self._made.clear()


@contextlib.contextmanager
def atomic_output(path: str | Path, *, make_parents: bool = False) -> Iterator[Path]:
    """``with atomic_output(path) as tmp:`` write the whole file at ``tmp``.

    When the block ends normally the file is fsynced and renamed to ``path``. When it
    raises, the temporary file is removed; an ``OSError`` from the block is taken as a
    failed write of ``path`` and becomes a one-line
    :class:`~kernels.errors.DataError`, anything else propagates unchanged.
    """
    out = AtomicOutput(path, make_parents=make_parents)
    try:
        yield out.tmp
        out.finish()
        out.commit()
    except OSError as exc:
        out.discard()
        raise output_error(out.path, exc) from None
    except BaseException:
        out.discard()
        raise


def write_text_atomic(path: str | Path, text: str, *, make_parents: bool = False) -> None:
    """Replace ``path`` with ``text`` (UTF-8) through :func:`atomic_output`."""
    with (
        atomic_output(path, make_parents=make_parents) as tmp,
        open(tmp, "w", encoding="utf-8") as f,
    ):
        f.write(text)
