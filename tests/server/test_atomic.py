"""Every file a command writes appears whole or not at all (training/atomic.py).

``score`` (output and reject file), ``generate``, ``report`` and ``feedback import``'s
reject file are run against a full file system, a read-only folder and a missing folder.
Afterwards the destination is absent (or the previous complete file is unchanged), no
temporary file is left, and the command printed one line naming the path and the cause.

The full disk is real where the machine allows it: a tmpfs of a few pages mounted in a
private user and mount namespace (``unshare``), the commands run inside it by a child
Python. Everywhere, the same commands also run in-process with the file object pyarrow
(or the report's text file) writes to replaced by one that accepts a few kilobytes and
then fails with ENOSPC, as the kernel does. Permission denied is real too: a folder of
mode 0555, seen by an unprivileged process (for root: an unmapped user namespace, where
root's capabilities do not apply).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from kernels.errors import DataError
from tests.conftest import CLI_ENV_VARS, ROOT, CliResult
from training.atomic import atomic_output, describe_os_error, write_text_atomic

pytestmark = pytest.mark.slow

ROWS = 20_000  # enough that every output is far larger than the free space
FREE = 64 * 1024  # bytes left on the "full" disk
NO_SPACE = "no space left on device"
DENIED = "permission denied"
_FILLER = "filler.bin"

Cli = Callable[..., CliResult]


# ---- inputs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Inputs:
    good: Path  # ROWS labelled deliveries: every row scores
    bad: Path  # the same with an impossible pickup latitude: every row is refused
    mixed: Path  # every other row refused
    feedback: Path  # ROWS feedback rows with negative minutes: every row is refused
    old_scores: Path  # a complete earlier score output (Parquet)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, models: Any) -> Inputs:
    from server.cli import main
    from training.io import write_table
    from training.synth import generate

    folder = tmp_path_factory.mktemp("atomic-inputs")
    table = generate(ROWS, seed=7)
    good, bad, feedback = folder / "good.parquet", folder / "bad.parquet", folder / "fb.csv"
    write_table(table, good)
    lat = table.schema.get_field_index("pickup_lat")
    write_table(table.set_column(lat, "pickup_lat", pa.array([999.0] * ROWS)), bad)
    mixed = folder / "mixed.parquet"
    lats = table.column("pickup_lat").to_pylist()
    lats[::2] = [999.0] * len(lats[::2])
    write_table(table.set_column(lat, "pickup_lat", pa.array(lats)), mixed)
    pacsv.write_csv(
        pa.table(
            {
                "order_id": table.column("order_id"),
                "actual_minutes": pa.array([-1.0] * ROWS),
                "completed_at": pa.array(["2025-03-01T10:00:00+00:00"] * ROWS),
            }
        ),
        feedback,
    )
    old = folder / "old.parquet"
    with contextlib.redirect_stderr(io.StringIO()):
        code = main(["score", str(good), "--out", str(old), "--registry", str(models.registry)])
    assert code == 0
    return Inputs(good, bad, mixed, feedback, old)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _listing(folder: Path) -> dict[str, str]:
    """Every file in ``folder`` (hidden ones too) with its SHA-256; the filler left out."""
    if not folder.is_dir():
        return {}
    return {p.name: _sha(p) for p in sorted(folder.iterdir()) if p.name != _FILLER}


def _one_line(err: str, expected: str) -> None:
    lines = err.splitlines()
    assert lines == [expected], err


# ---- the cases: one command each, against a folder that will be full or read-only ------------


@dataclass(frozen=True)
class Case:
    """``argv`` writes into ``folder`` (and maybe ``other``); ``path`` is the file that
    cannot be written; ``old`` are complete files in ``folder`` beforehand."""

    name: str
    argv: list[str]
    folder: Path
    path: Path
    old: dict[str, str]  # name in folder -> source file
    other: Path | None = None  # a second watched folder with room


def _cases(base: Path, inputs: Inputs, registry: Path) -> list[Case]:
    reg = ["--registry", str(registry)]
    cases: list[Case] = []

    def add(name: str, argv: list[str], path: str, old: dict[str, str] | None = None) -> Path:
        folder = base / name
        cases.append(
            Case(
                name,
                [a.replace("{d}", str(folder)) for a in argv],
                folder,
                folder / path,
                old or {},
            )
        )
        return folder

    add(
        "score-parquet-over-old",
        ["score", str(inputs.good), "--out", "{d}/etas.parquet", "--quiet", *reg],
        "etas.parquet",
        {"etas.parquet": str(inputs.old_scores)},
    )
    add(
        "score-parquet",
        ["score", str(inputs.good), "--out", "{d}/etas.parquet", "--quiet", *reg],
        "etas.parquet",
    )
    add(
        "score-csv",
        ["score", str(inputs.good), "--out", "{d}/etas.csv", "--quiet", *reg],
        "etas.csv",
    )
    # the reject file cannot be written; the (small) output goes to a folder with room
    roomy = base / "roomy"
    folder = base / "score-rejects"
    cases.append(
        Case(
            "score-rejects",
            [
                *("score", str(inputs.bad), "--out", str(roomy / "etas.parquet"), "--quiet"),
                *("--rejects", str(folder / "etas.rejects.csv"), *reg),
            ],
            folder,
            folder / "etas.rejects.csv",
            {},
            other=roomy,
        )
    )
    add(
        "generate-parquet", ["generate", "--rows", str(ROWS), "--out", "{d}/d.parquet"], "d.parquet"
    )
    add("generate-csv", ["generate", "--rows", str(ROWS), "--out", "{d}/d.csv"], "d.csv")
    add(
        "report-over-old",
        ["report", "--data", str(inputs.good), "--out", "{d}/report.html", *reg],
        "report.html",
        {"report.html": str(inputs.old_scores)},  # any complete earlier file
    )
    add(
        "feedback-rejects",
        ["feedback", "import", str(inputs.feedback), "--quiet", "--rejects", "{d}/fb.rejects.csv"],
        "fb.rejects.csv",
    )
    return cases


def _child_env(base: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLI_ENV_VARS}
    env["PYTHONPATH"] = str(ROOT)
    env["DATABASE_URL"] = f"sqlite:///{base / 'db' / 'intellilog.db'}"
    return env


def _child() -> None:
    """Run in a child process: for each case (JSON on stdin), optionally mount a tmpfs on
    its folder and fill it to FREE bytes, put its old files there, run the command
    in-process and report exit code, stderr and what the watched folders hold."""
    from server.cli import main

    job = json.load(sys.stdin)
    results = {}
    for c in job["cases"]:
        folder = Path(c["folder"])
        folder.mkdir(parents=True, exist_ok=True)
        if job["mount"]:
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(folder)], check=True
            )
        for name, src in c["old"].items():
            shutil.copyfile(src, folder / name)
        if job["mount"]:
            _fill(folder / _FILLER, FREE)
        if job["readonly"]:
            folder.chmod(0o555)
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(c["argv"])
        watched = [folder] + ([Path(c["other"])] if c["other"] else [])
        results[c["name"]] = {
            "code": code,
            "err": err.getvalue(),
            "listing": {str(w): _listing(w) for w in watched},
        }
    json.dump(results, sys.stdout)


def _fill(path: Path, free: int) -> None:
    """Fill the file system of ``path`` up, then give back ``free`` bytes."""
    with open(path, "wb", buffering=0) as f:
        with contextlib.suppress(OSError):
            while f.write(b"\0" * 65536):
                pass
        size = f.tell()
    os.truncate(path, max(0, size - free))


def _run_child(
    prefix: list[str], cases: list[Case], base: Path, mount: bool, readonly: bool
) -> Any:
    job = {
        "mount": mount,
        "readonly": readonly,
        "cases": [
            {
                "name": c.name,
                "argv": c.argv,
                "folder": str(c.folder),
                "old": c.old,
                "other": str(c.other) if c.other else None,
            }
            for c in cases
        ],
    }
    cwd = base / "cwd"
    cwd.mkdir(exist_ok=True)
    code = "from tests.server.test_atomic import _child; _child()"
    proc = subprocess.run(
        [*prefix, sys.executable, "-c", code],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        cwd=cwd,
        env=_child_env(base),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def _namespace_prefix(options: list[str], probe: str) -> list[str] | None:
    """``unshare OPTIONS`` if this machine lets us run ``probe`` (sh) inside, else None."""
    if shutil.which("unshare") is None:
        return None
    prefix = ["unshare", *options]
    try:
        ok = subprocess.run([*prefix, "sh", "-c", probe], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return prefix if ok.returncode == 0 else None


def _check_failed(case: Case, res: dict[str, Any], cause: str) -> None:
    """Exit 2, one line naming the path and the cause, old files unchanged, nothing else."""
    assert res["code"] == 2, res["err"]
    _one_line(res["err"], f"error: {case.path}: cannot write: {cause}")
    expected = {name: _sha(Path(src)) for name, src in case.old.items()}
    assert res["listing"][str(case.folder)] == expected
    if case.other is not None:  # the scores of a run whose reject file failed: none
        assert res["listing"][str(case.other)] == {}


# ---- a real full disk ------------------------------------------------------------------------


def test_full_tmpfs_leaves_no_partial_output(inputs: Inputs, models: Any, tmp_path: Path) -> None:
    probe = f"mkdir -p {tmp_path}/probe && mount -t tmpfs -o size=64k tmpfs {tmp_path}/probe"
    prefix = _namespace_prefix(["--user", "--map-root-user", "--mount"], probe) or (
        _namespace_prefix(["--mount"], probe)
    )
    if prefix is None or shutil.which("mount") is None:
        pytest.skip(
            "cannot mount a tmpfs here (no user or mount namespaces); the in-process "
            "ENOSPC tests below cover the same cases"
        )
    cases = _cases(tmp_path / "full", inputs, models.registry)
    results = _run_child(prefix, cases, tmp_path, mount=True, readonly=False)
    for case in cases:
        _check_failed(case, results[case.name], NO_SPACE)


# ---- permission denied -----------------------------------------------------------------------


def test_read_only_folder_is_one_line_and_leaves_nothing(
    inputs: Inputs, models: Any, tmp_path: Path
) -> None:
    prefix: list[str] | None = []
    if os.geteuid() == 0:  # root ignores file modes; in an unmapped user namespace it does not
        probe = f"mkdir -m 555 {tmp_path}/probe && ! touch {tmp_path}/probe/x 2>/dev/null"
        prefix = _namespace_prefix(["--user"], probe)
    if prefix is None:
        pytest.skip("running as root without user namespaces: file modes do not apply")
    cases = _cases(tmp_path / "ro", inputs, models.registry)
    try:
        results = _run_child(prefix, cases, tmp_path, mount=False, readonly=True)
    finally:
        for c in cases:
            with contextlib.suppress(OSError):
                c.folder.chmod(0o755)
    for case in cases:
        _check_failed(case, results[case.name], DENIED)


# ---- ENOSPC injected where the bytes go to the file --------------------------------------------


class _FullDisk(io.FileIO):
    """A real file that takes ``room`` bytes and then fails as a full file system does
    (the bytes that fitted are written, the call raises ENOSPC)."""

    def __init__(self, path: str | os.PathLike[str], room: int = FREE) -> None:
        super().__init__(path, "w")
        self.room = room

    def write(self, b: Any) -> int:
        data = bytes(memoryview(b))
        if len(data) > self.room:
            super().write(data[: self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return super().write(data)


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every output file the commands open goes through :class:`_FullDisk`."""
    import training.atomic

    real_pw, real_csvw = pq.ParquetWriter, pacsv.CSVWriter
    real_write_table, real_write_csv = pq.write_table, pacsv.write_csv
    monkeypatch.setattr(pq, "ParquetWriter", lambda w, s, **kw: real_pw(_FullDisk(w), s, **kw))
    monkeypatch.setattr(pacsv, "CSVWriter", lambda w, s, **kw: real_csvw(_FullDisk(w), s, **kw))
    monkeypatch.setattr(
        pq, "write_table", lambda t, w, **kw: real_write_table(t, _FullDisk(w), **kw)
    )
    monkeypatch.setattr(
        pacsv, "write_csv", lambda t, w, **kw: real_write_csv(t, _FullDisk(w), **kw)
    )

    real_path_open = Path.open

    def text_open(path: Any, mode: str = "r", **kw: Any) -> Any:
        if mode != "w":
            return real_path_open(Path(path), mode, **kw)
        return io.TextIOWrapper(io.BufferedWriter(_FullDisk(path)), **kw)

    monkeypatch.setattr(training.atomic, "open", text_open, raising=False)
    monkeypatch.setattr(Path, "open", text_open)


def test_injected_enospc_leaves_no_partial_output(
    cli: Cli,
    inputs: Inputs,
    models: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'db' / 'intellilog.db'}")
    cases = _cases(tmp_path / "full", inputs, models.registry)
    for c in cases:
        c.folder.mkdir(parents=True)
        for name, src in c.old.items():
            shutil.copyfile(src, c.folder / name)
    request.getfixturevalue("full_disk")
    for c in cases:
        r = cli(*c.argv)
        res = {
            "code": r.code,
            "err": r.err,
            "listing": {str(w): _listing(w) for w in (c.folder, c.other) if w is not None},
        }
        _check_failed(c, res, NO_SPACE)


def test_injected_enospc_removes_the_folders_it_made(
    cli: Cli, inputs: Inputs, models: Any, tmp_path: Path, full_disk: None
) -> None:
    out = tmp_path / "new" / "sub" / "etas.csv"
    r = cli("score", inputs.good, "--out", out, "--quiet", "--registry", models.registry)
    assert r.code == 2
    _one_line(r.err, f"error: {out}: cannot write: {NO_SPACE}")
    assert not (tmp_path / "new").exists()


# ---- success ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_score_success_leaves_complete_files_and_no_temp(
    cli: Cli, inputs: Inputs, models: Any, tmp_path: Path, fmt: str
) -> None:
    folder = tmp_path / "made" / "here"  # missing folders are created
    out = folder / f"etas.{fmt}"
    r = cli("score", inputs.mixed, "--out", out, "--quiet", "--json", "--registry", models.registry)
    assert r.code == 0, r.err
    report = r.json()
    assert report["rows_scored"] == report["rows_rejected"] == ROWS // 2
    assert sorted(p.name for p in folder.iterdir()) == sorted([out.name, "etas.rejects.csv"])
    scores = pq.read_table(out) if fmt == "parquet" else pacsv.read_csv(out)
    assert scores.num_rows == ROWS // 2
    assert scores.column_names == ["order_id", "eta_minutes", "eta_p10", "eta_p90", "model_version"]
    rejects = pacsv.read_csv(folder / "etas.rejects.csv")
    assert rejects.column("row").to_pylist() == list(range(0, ROWS, 2))


def test_generate_and_report_success_replace_the_old_file(
    cli: Cli, inputs: Inputs, models: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training.synth import generate

    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'db' / 'intellilog.db'}")
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "d.csv").write_text("old\n")
    (folder / "r.html").write_text("old\n")
    assert cli("generate", "--rows", "500", "--seed", "3", "--out", folder / "d.csv").code == 0
    r = cli("report", "--registry", models.registry, "--out", folder / "r.html")
    assert r.code == 0, r.err
    assert sorted(p.name for p in folder.iterdir()) == ["d.csv", "r.html"]
    back = pacsv.read_csv(folder / "d.csv")
    assert back.num_rows == 500
    assert back.column("order_id").equals(generate(500, seed=3).column("order_id"))
    assert (folder / "r.html").read_text(encoding="utf-8").rstrip().endswith("</html>")


# ---- missing folders and paths that cannot be folders -----------------------------------------


def test_missing_folder_is_one_line(
    cli: Cli, inputs: Inputs, models: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``report`` and ``feedback import --rejects`` do not create folders; ``generate`` and
    ``score`` do, and say so when a file stands where a folder should be."""
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'db' / 'intellilog.db'}")
    missing = tmp_path / "no" / "such"
    page = missing / "r.html"
    r = cli("report", "--registry", models.registry, "--out", page)
    assert r.code == 2
    _one_line(r.err, f"error: {page}: cannot write: the folder {missing} does not exist")
    rej = missing / "fb.rejects.csv"
    r = cli("feedback", "import", inputs.feedback, "--quiet", "--rejects", rej)
    assert r.code == 2
    _one_line(r.err, f"error: {rej}: cannot write: the folder {missing} does not exist")
    assert not (tmp_path / "no").exists()

    blocker = tmp_path / "file"
    blocker.write_text("x")
    sub = blocker / "sub"
    reg = ("--registry", models.registry)
    for out, argv in (
        (sub / "d.parquet", ("generate", "--rows", "10")),
        (sub / "e.csv", ("score", inputs.good, "--quiet", *reg)),
    ):
        r = cli(*argv, "--out", out)
        assert r.code == 2
        _one_line(r.err, f"error: {out}: cannot write: a part of {sub} is a file, not a folder")
    assert blocker.read_text() == "x"


# ---- the helper ------------------------------------------------------------------------------


def test_atomic_output_commits_only_a_finished_file(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("old")
    with pytest.raises(DataError) as err, atomic_output(path) as tmp:
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert str(err.value) == f"{path}: cannot write: {NO_SPACE}"
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]

    with pytest.raises(KeyError), atomic_output(path) as tmp:  # not an I/O error: unchanged
        tmp.write_text("half")
        raise KeyError("x")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]

    write_text_atomic(path, "new")
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]

    with pytest.raises(DataError, match="it is a folder"):
        write_text_atomic(tmp_path, "x")


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (errno.ENOSPC, NO_SPACE),
        (errno.EDQUOT, "disk quota exceeded"),
        (errno.EACCES, DENIED),
        (errno.EPERM, DENIED),
        (errno.EROFS, "read-only file system"),
        (errno.ENOENT, "the folder /x/y does not exist"),
        (errno.ENOTDIR, "a part of /x/y is a file, not a folder"),
    ],
)
def test_errno_in_words(code: int, words: str) -> None:
    assert (
        describe_os_error(OSError(code, "Error writing bytes. Detail: [errno]"), "/x/y/z") == words
    )
