"""Settings from the environment and .env: typed, validated, naming the bad value."""

from pathlib import Path

import pytest

from kernels.errors import ConfigError
from server.config import load_dotenv, load_settings


def test_defaults_and_env_override(tmp_path: Path) -> None:
    s = load_settings({}, dotenv=None)
    assert (
        s.environment == "development" and s.engine == "compiled" and s.rate_limit_per_minute == 0
    )
    env = {
        "ENVIRONMENT": "production",
        "ENABLE_AB_TESTING": "yes",
        "QUALITY_THRESHOLD": "70",
        "MAX_BATCH_SIZE": "500",
    }
    s = load_settings(env, dotenv=None)
    assert s.environment == "production" and s.enable_ab_testing is True
    assert s.quality_threshold == 70.0 and s.max_batch_size == 500


def test_gpu_min_rows_setting() -> None:
    from server.engines import DEFAULT_GPU_MIN_ROWS

    assert load_settings({}, dotenv=None).gpu_min_rows == DEFAULT_GPU_MIN_ROWS == 4096
    assert load_settings({"INTELLILOG_GPU_MIN_ROWS": "0"}, dotenv=None).gpu_min_rows == 0
    assert load_settings({"INTELLILOG_GPU_MIN_ROWS": "65536"}, dotenv=None).gpu_min_rows == 65536


def test_dotenv_is_read_and_env_wins(tmp_path: Path) -> None:
    p = tmp_path / ".env"
    p.write_text("# comment\nexport TENANT_ID='acme'\nINTELLILOG_ENGINE=numba\n\nLOG_LEVEL=debug\n")
    assert load_dotenv(p) == {
        "TENANT_ID": "acme",
        "INTELLILOG_ENGINE": "numba",
        "LOG_LEVEL": "debug",
    }
    s = load_settings({"INTELLILOG_ENGINE": "lightgbm"}, dotenv=p)
    assert s.tenant_id == "acme" and s.engine == "lightgbm"
    assert load_settings({"INTELLILOG_ENGINE": "compiled"}, dotenv=None).engine == "compiled"
    bad = tmp_path / "bad.env"
    bad.write_text("JUSTAWORD\n")
    with pytest.raises(ConfigError, match=r"bad\.env:1: expected KEY=VALUE"):
        load_dotenv(bad)


def test_dotenv_inline_comments_and_quotes(tmp_path: Path) -> None:
    p = tmp_path / ".env"
    p.write_text(
        "LOG_LEVEL=debug    # verbose\nTENANT_ID='a # b'  # quoted hash stays\n"
        'ADMIN_TOKEN="x y"\nDATABASE_URL=sqlite:///a#b.db\n'
    )
    assert load_dotenv(p) == {
        "LOG_LEVEL": "debug",
        "TENANT_ID": "a # b",
        "ADMIN_TOKEN": "x y",
        "DATABASE_URL": "sqlite:///a#b.db",  # no space before '#': part of the value
    }
    (tmp_path / "open.env").write_text("TENANT_ID='acme\n")
    with pytest.raises(ConfigError, match="unterminated quote"):
        load_dotenv(tmp_path / "open.env")


def test_env_example_is_a_working_env_file(tmp_path: Path) -> None:
    """A newcomer's `cp .env.example .env` must start with the documented defaults."""
    example = Path(__file__).resolve().parents[2] / ".env.example"
    values = load_dotenv(example)
    assert values and all("#" not in v for k, v in values.items() if k != "DATABASE_URL")
    load_settings({}, dotenv=example)  # every value converts


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("ENVIRONMENT", "staging"),
        ("INTELLILOG_ENGINE", "tensorrt"),
        ("ENABLE_DRIFT_DETECTION", "maybe"),
        ("QUALITY_THRESHOLD", "high"),
        ("QUALITY_THRESHOLD", "120"),
        ("DATABASE_URL", "mysql://x"),
        ("LOG_LEVEL", "LOUD"),
        ("RATE_LIMIT_PER_MINUTE", "-1"),
        ("MAX_BATCH_SIZE", "2.5"),
        ("MAX_BODY_MB", "0"),
        ("INTELLILOG_GPU_MIN_ROWS", "-1"),
        ("INTELLILOG_GPU_MIN_ROWS", "4k"),
        ("RELOAD_INTERVAL_S", "0"),
        ("MICRO_BATCH_MAX", "0"),
        ("MICRO_BATCH_MAX", "5000"),
        ("TENANT_ID", ""),
        ("PREDICTION_LOG", "sometimes"),
        ("PREDICTION_LOG_WRITER", "sidecar"),
        ("PREDICTION_RETENTION_DAYS", "-1"),
        ("PREDICTION_RETENTION_DAYS", "a month"),
        ("DATABASE_URL", "sqlite:///"),
        ("DATABASE_URL", "sqlite:relative.db"),
    ],
)
def test_bad_values_name_the_variable(var: str, value: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings({var: value}, dotenv=None)
    assert var in str(exc.value)


def test_prediction_log_settings(tmp_path: Path) -> None:
    s = load_settings({}, dotenv=None)
    assert s.prediction_log is True and s.prediction_retention_days == 30
    assert s.database_url == "sqlite:///./intellilog.db"
    assert s.spool_file == Path("intellilog.spool")  # beside ./intellilog.db
    env = {"PREDICTION_LOG": "off", "PREDICTION_RETENTION_DAYS": "0.5"}
    s = load_settings(env, dotenv=None)
    assert s.prediction_log is False and s.prediction_retention_days == 0.5
    assert load_settings({"PREDICTION_LOG": "on"}, dotenv=None).prediction_log is True
    assert s.prediction_log_writer == "process"
    writer = load_settings({"PREDICTION_LOG_WRITER": "thread"}, dotenv=None)
    assert writer.prediction_log_writer == "thread"
    spools = {
        "sqlite:////var/lib/intellilog/db.sqlite": Path("/var/lib/intellilog/intellilog.spool"),
        "sqlite:///data/x.db": Path("data/intellilog.spool"),
        "sqlite:///:memory:": Path("intellilog.spool"),
        "postgresql://u@db:5432/intellilog": Path("intellilog.spool"),
    }
    for url, spool in spools.items():
        assert load_settings({"DATABASE_URL": url}, dotenv=None).spool_file == spool, url
    mine = str(tmp_path / "rows.spool")
    assert load_settings({"SPOOL_PATH": mine}, dotenv=None).spool_file == Path(mine)
    with pytest.raises(ConfigError, match=r"SPOOL_PATH=.* is a folder"):
        load_settings({"SPOOL_PATH": str(tmp_path)}, dotenv=None)


def test_database_url_errors_hide_the_password() -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings({"DATABASE_URL": "mysql://me:s3cret@db/x"}, dotenv=None)
    assert "s3cret" not in str(exc.value) and "mysql://me:***@db/x" in str(exc.value)


def test_production_logs_are_json_lines_with_request_id() -> None:
    import io
    import json
    import logging

    from server.logs import configure_logging

    configure_logging("production", "INFO")
    log = logging.getLogger("intellilog.server")
    buf = io.StringIO()
    log.parent.handlers[0].setStream(buf)  # type: ignore[union-attr]
    log.info("POST /v1/predict -> 422 bad (request r1)", extra={"request_id": "r1"})
    rec = json.loads(buf.getvalue().strip())
    assert (
        rec["level"] == "info"
        and rec["request_id"] == "r1"
        and rec["logger"] == "intellilog.server"
    )
    configure_logging("development", "INFO")
