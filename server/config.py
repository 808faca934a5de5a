"""Typed settings read from environment variables (and a ``.env`` file).

Validated once at start-up; a bad value raises ConfigError naming the variable,
the value and what is allowed.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from kernels.errors import ConfigError
from server.monitoring.windows import Window, parse_cycles, parse_window, parse_windows

__all__ = [
    "DEFAULT_ENGINE",
    "ENGINES",
    "MIN_PRODUCTION_TOKEN",
    "Settings",
    "load_dotenv",
    "load_settings",
    "parse_networks",
]

ENGINES = ("onnx", "numba", "compiled", "lightgbm", "hummingbird")
#: The one default engine of the server and of every command that loads a model: the
#: forest compiled to machine code (kernels/compiled.py), bit-exact with LightGBM and the
#: fastest here (bench/RESULTS.md); cached after the first load.
DEFAULT_ENGINE = "compiled"
_SQLITE = "sqlite:///"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
#: the shortest ADMIN_TOKEN a production server starts with (a short bearer token can be
#: guessed over the network; 16 random characters cannot)
MIN_PRODUCTION_TOKEN = 16
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Settings:
    environment: str = "development"  # development | production | test
    tenant_id: str = "default"
    database_url: str = "sqlite:///./intellilog.db"
    model_artifact_path: str = "./models"
    engine: str = DEFAULT_ENGINE
    allow_gpu: bool = True
    # batches of at least this many rows go to the GPU engine when there is one
    # (server.engines: hummingbird on CUDA, behind its parity check); 0 = never
    gpu_min_rows: int = 4096
    enable_drift_detection: bool = True
    enable_ab_testing: bool = False
    quality_threshold: float = 80.0
    log_level: str = "INFO"
    model_alias: str = "production"
    admin_token: str = ""
    rate_limit_per_minute: float = 0.0  # per client address; 0 = off
    # peers (IPs or CIDRs, comma-separated) whose X-Forwarded-For names the client of the
    # rate limit; "" = the header is never trusted (the TCP peer is the client)
    trusted_proxies: str = ""
    max_batch_size: int = 10_000
    # concurrent /v1/predict requests are predicted together, up to this many rows per
    # engine call (server.app.MicroBatcher); 1 = every request on its own
    micro_batch_max: int = 64
    max_body_mb: float = 32.0
    # the V2 gRPC inference service (server/grpc, needs intellilog[grpc]) on this address
    # in every worker beside HTTP; 0 = off (`intellilog serve --grpc-port` sets both)
    grpc_port: int = 0
    grpc_host: str = "127.0.0.1"
    reload_interval_s: float = 1.0  # how often the server checks the registry aliases
    # every answered prediction is logged to DATABASE_URL off the hot path (server.recorder)
    prediction_log: bool = True
    # who writes the log under `intellilog serve`: "process" = one log-writer process fed
    # by every worker through shared memory (server.store.relay; Linux x86-64), "thread" =
    # each worker on a thread of its own (the store's work then shares its core)
    prediction_log_writer: str = "process"
    # predictions and feedback older than this are deleted, hourly; 0 = keep everything
    prediction_retention_days: float = 30.0
    # rows waiting for the database when it is down; "" = see spool_file
    spool_path: str = ""
    # live quality (server.monitoring.quality): gauges and /v1/monitoring/quality refreshed
    # this often from the store, over these windows of feedback completion time
    quality_interval_s: float = 30.0
    quality_windows: str = "1h,24h,7d"
    # drift (server.monitoring.drift, when ENABLE_DRIFT_DETECTION): refresh interval, the
    # window of logged inputs judged, and features with a known cycle ("weather=365d")
    drift_interval_s: float = 60.0
    drift_window: str = "24h"
    drift_cycles: str = ""
    # experiments (server.experiments, when ENABLE_AB_TESTING): the defaults of `ab start`
    # and of the experiment `retrain` starts; the analysis' minimum detectable effect
    # (relative MAE change), power and alpha; sequential = the always-valid test
    ab_mode: str = "shadow"
    ab_split: float = 0.5
    ab_duration_hours: float = 48.0
    ab_mde: float = 0.05
    ab_power: float = 0.8
    ab_alpha: float = 0.05
    ab_sequential: bool = True
    # retraining (`intellilog retrain`): the feedback window, the least labelled rows, the
    # MAE improvement over production that makes a candidate (QUALITY_THRESHOLD gates the
    # data), the local run log ("" = runs.jsonl in the registry folder) and MLflow
    retrain_lookback_days: float = 7.0
    retrain_min_samples: int = 100
    retrain_min_improvement: float = 0.05
    run_log: str = ""
    mlflow_tracking_uri: str = ""

    @property
    def registry_path(self) -> Path | str:
        """The registry folder, or its URL as given (``s3://...``: a Path would fold ``//``)."""
        p = self.model_artifact_path
        return p if "://" in p else Path(p)

    @property
    def spool_file(self) -> Path:
        """``SPOOL_PATH``, or ``intellilog.spool`` beside the SQLite file of
        ``DATABASE_URL`` (in the working folder for PostgreSQL and ``:memory:``)."""
        if self.spool_path:
            return Path(self.spool_path)
        if self.database_url.startswith(_SQLITE):
            db = self.database_url[len(_SQLITE) :]
            if db != ":memory:":
                return Path(db).parent / "intellilog.spool"
        return Path("intellilog.spool")

    @property
    def trusted_networks(self) -> tuple[Network, ...]:
        """``TRUSTED_PROXIES`` parsed (validated by :func:`load_settings`)."""
        return parse_networks(self.trusted_proxies)

    @property
    def quality_window_list(self) -> tuple[Window, ...]:
        """``QUALITY_WINDOWS`` parsed (validated by :func:`load_settings`)."""
        return parse_windows(_items(self.quality_windows), "QUALITY_WINDOWS")

    @property
    def drift_window_s(self) -> float:
        """``DRIFT_WINDOW`` in seconds (validated by :func:`load_settings`)."""
        return parse_window(self.drift_window, "DRIFT_WINDOW").seconds

    @property
    def drift_cycle_seconds(self) -> dict[str, float]:
        """``DRIFT_CYCLES`` as feature -> cycle length in seconds (validated by
        :func:`load_settings`)."""
        return parse_cycles(_items(self.drift_cycles), "DRIFT_CYCLES")


def _items(text: str) -> list[str]:
    """The non-blank items of a comma-separated setting."""
    return [w for w in text.split(",") if w.strip()]


#: Numeric settings: their inclusive range, what the number is, and what an edge means.
_RANGES: tuple[tuple[str, float, float, str, str], ...] = (
    ("quality_threshold", 0, 100, "a quality score", ""),
    ("max_batch_size", 1, 1_000_000, "a whole number of rows", ""),
    ("micro_batch_max", 1, 4096, "a whole number of rows", "1 = no micro-batching"),
    ("gpu_min_rows", 0, 1_000_000_000, "rows", "0 = never use the GPU for large batches"),
    ("grpc_port", 0, 65535, "a port", "0 = no gRPC"),
    ("max_body_mb", 0.01, 1024, "megabytes", ""),
    ("reload_interval_s", 0.05, 3600, "seconds", ""),
    ("prediction_retention_days", 0, 36_500, "days", "0 = keep every prediction"),
    ("quality_interval_s", 1, 86_400, "seconds", ""),
    ("drift_interval_s", 1, 86_400, "seconds", ""),
)

_ENV = {
    "environment": "ENVIRONMENT",
    "tenant_id": "TENANT_ID",
    "database_url": "DATABASE_URL",
    "model_artifact_path": "MODEL_ARTIFACT_PATH",
    "engine": "INTELLILOG_ENGINE",
    "allow_gpu": "INTELLILOG_ALLOW_GPU",
    "gpu_min_rows": "INTELLILOG_GPU_MIN_ROWS",
    "enable_drift_detection": "ENABLE_DRIFT_DETECTION",
    "enable_ab_testing": "ENABLE_AB_TESTING",
    "quality_threshold": "QUALITY_THRESHOLD",
    "log_level": "LOG_LEVEL",
    "model_alias": "MODEL_ALIAS",
    "admin_token": "ADMIN_TOKEN",
    "rate_limit_per_minute": "RATE_LIMIT_PER_MINUTE",
    "trusted_proxies": "TRUSTED_PROXIES",
    "max_batch_size": "MAX_BATCH_SIZE",
    "micro_batch_max": "MICRO_BATCH_MAX",
    "max_body_mb": "MAX_BODY_MB",
    "grpc_port": "GRPC_PORT",
    "grpc_host": "GRPC_HOST",
    "reload_interval_s": "RELOAD_INTERVAL_S",
    "prediction_log": "PREDICTION_LOG",
    "prediction_log_writer": "PREDICTION_LOG_WRITER",
    "prediction_retention_days": "PREDICTION_RETENTION_DAYS",
    "spool_path": "SPOOL_PATH",
    "quality_interval_s": "QUALITY_INTERVAL_S",
    "quality_windows": "QUALITY_WINDOWS",
    "drift_interval_s": "DRIFT_INTERVAL_S",
    "drift_window": "DRIFT_WINDOW",
    "drift_cycles": "DRIFT_CYCLES",
    "ab_mode": "AB_MODE",
    "ab_split": "AB_SPLIT",
    "ab_duration_hours": "AB_DURATION_HOURS",
    "ab_mde": "AB_MDE",
    "ab_power": "AB_POWER",
    "ab_alpha": "AB_ALPHA",
    "ab_sequential": "AB_SEQUENTIAL",
    "retrain_lookback_days": "RETRAIN_LOOKBACK_DAYS",
    "retrain_min_samples": "RETRAIN_MIN_SAMPLES",
    "retrain_min_improvement": "RETRAIN_MIN_IMPROVEMENT",
    "run_log": "RUN_LOG",
    "mlflow_tracking_uri": "MLFLOW_TRACKING_URI",
}


def load_dotenv(path: str | Path = ".env") -> dict[str, str]:
    """KEY=VALUE lines of a .env file: blank lines and ``#`` comment lines skipped; a
    quoted value is taken as written between its quotes; an unquoted value ends at an
    inline comment (whitespace then ``#``), as in ``.env.example``."""
    p = Path(path)
    out: dict[str, str] = {}
    if not p.is_file():
        return out
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if s.startswith("export "):
            s = s[7:]
        key, sep, val = s.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{p}:{n}: expected KEY=VALUE, got {line!r}")
        val = val.strip()
        if val[:1] in ("'", '"'):
            end = val.find(val[0], 1)
            if end < 0:
                raise ConfigError(f"{p}:{n}: unterminated quote in {line!r}")
            val = val[1:end]
        else:
            val = "" if val.startswith("#") else re.split(r"\s#", val, maxsplit=1)[0].rstrip()
        out[key.strip()] = val
    return out


def parse_networks(text: str, var: str = "TRUSTED_PROXIES") -> tuple[Network, ...]:
    """Comma-separated IP addresses or CIDR blocks (``10.0.0.0/8,::1``) as networks; a
    bad entry raises ConfigError naming it."""
    out: list[Network] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        try:
            out.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ConfigError(
                f"{var}: {item!r} is not an IP address or CIDR block "
                "(e.g. 10.0.0.1, 10.0.0.0/8, fd00::/8)"
            ) from None
    return tuple(out)


def _convert(name: str, var: str, raw: str, default: Any) -> Any:
    if isinstance(default, bool):
        v = raw.strip().lower()
        if v in _TRUE:
            return True
        if v in _FALSE:
            return False
        raise ConfigError(f"{var}={raw!r}: expected on or off (or true/false, yes/no, 1/0)")
    if isinstance(default, int):
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{var}={raw!r}: expected a whole number") from None
    if isinstance(default, float):
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{var}={raw!r}: expected a number") from None
    return raw.strip()


def load_settings(
    env: Mapping[str, str] | None = None, dotenv: str | Path | None = ".env"
) -> Settings:
    """Settings from ``env`` (default: os.environ) over the .env file over defaults."""
    merged: dict[str, str] = {}
    if dotenv is not None:
        merged.update(load_dotenv(dotenv))
    merged.update(os.environ if env is None else env)
    values: dict[str, Any] = {}
    for f in fields(Settings):
        var = _ENV[f.name]
        if var in merged:
            values[f.name] = _convert(f.name, var, merged[var], f.default)
    s = Settings(**values)
    if s.environment not in ("development", "production", "test"):
        raise ConfigError(f"ENVIRONMENT={s.environment!r}: use development, production or test")
    if s.engine not in ENGINES:
        raise ConfigError(f"INTELLILOG_ENGINE={s.engine!r}: use one of {', '.join(ENGINES)}")
    for name, lo, hi, what, edge in _RANGES:
        value = getattr(s, name)
        if not lo <= value <= hi:
            why = f" ({edge})" if edge else ""
            raise ConfigError(f"{_ENV[name]}={value!r}: {what} within [{lo}, {hi}]{why}")
    if not (
        (s.database_url.startswith(_SQLITE) and len(s.database_url) > len(_SQLITE))
        or s.database_url.startswith(("postgresql://", "postgres://"))
    ):
        raise ConfigError(
            f"DATABASE_URL={_redact(s.database_url)!r}: use sqlite:///PATH.db (relative), "
            "sqlite:////PATH.db (absolute), sqlite:///:memory: or postgresql://USER@HOST/DB"
        )
    if s.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"LOG_LEVEL={s.log_level!r}: use DEBUG, INFO, WARNING or ERROR")
    if s.rate_limit_per_minute < 0:
        raise ConfigError(
            f"RATE_LIMIT_PER_MINUTE={s.rate_limit_per_minute!r}: must be >= 0 (0 = off)"
        )
    parse_networks(s.trusted_proxies)
    if s.environment == "production" and 0 < len(s.admin_token) < MIN_PRODUCTION_TOKEN:
        raise ConfigError(  # the token itself is never printed (errors are logged)
            f"ADMIN_TOKEN is {len(s.admin_token)} characters: ENVIRONMENT=production needs at "
            f"least {MIN_PRODUCTION_TOKEN} (e.g. `python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))'`), or leave it empty for no admin API"
        )
    if s.grpc_port and not s.grpc_host:
        raise ConfigError("GRPC_HOST is empty: the address gRPC listens on, e.g. 127.0.0.1")
    if not s.tenant_id:
        raise ConfigError("TENANT_ID is empty")
    if len(s.tenant_id) > 128 or not s.tenant_id.isprintable():
        raise ConfigError(f"TENANT_ID={s.tenant_id!r}: at most 128 printable characters")
    # parsing the windows and cycles raises ConfigError naming the setting
    _ = (s.quality_window_list, s.drift_window_s, s.drift_cycle_seconds)
    _check_experiments(s)
    if s.spool_path and Path(s.spool_path).is_dir():
        raise ConfigError(
            f"SPOOL_PATH={s.spool_path!r} is a folder: name a file in it, e.g. "
            f"{str(Path(s.spool_path) / 'intellilog.spool')!r}"
        )
    return s


def _check_experiments(s: Settings) -> None:
    """The AB_* and RETRAIN_* settings, by the rules ``ab start`` and ``retrain`` apply."""
    if s.prediction_log_writer not in ("process", "thread"):
        raise ConfigError(
            f"PREDICTION_LOG_WRITER={s.prediction_log_writer!r}: use process or thread"
        )
    if s.ab_mode not in ("ab", "shadow"):
        raise ConfigError(f"AB_MODE={s.ab_mode!r}: use ab or shadow")
    for var, value, lo, hi in (
        ("AB_SPLIT", s.ab_split, 0.0, 1.0),
        ("AB_MDE", s.ab_mde, 0.0, 1.0),
        ("AB_POWER", s.ab_power, 0.0, 1.0),
        ("AB_ALPHA", s.ab_alpha, 0.0, 0.5),
        ("RETRAIN_MIN_IMPROVEMENT", s.retrain_min_improvement, 0.0, 1.0),
    ):
        if not lo < value < hi:
            raise ConfigError(f"{var}={value!r}: must be between {lo:g} and {hi:g} (exclusive)")
    if not 0 < s.ab_duration_hours <= 24 * 365:
        raise ConfigError(f"AB_DURATION_HOURS={s.ab_duration_hours!r}: hours within (0, 8760]")
    if not 0 < s.retrain_lookback_days <= 3650:
        raise ConfigError(
            f"RETRAIN_LOOKBACK_DAYS={s.retrain_lookback_days!r}: days within (0, 3650]"
        )
    if s.retrain_min_samples < 1:
        raise ConfigError(f"RETRAIN_MIN_SAMPLES={s.retrain_min_samples!r}: at least 1")


def _redact(url: str) -> str:
    """``url`` without its password (settings errors are logged)."""
    return re.sub(r"^([a-z]+://[^:/@]*):[^@/]*@", r"\1:***@", url)
