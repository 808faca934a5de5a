"""Experiments: start, stop, analyse and conclude, over the store and the registry.

One code path for the CLI (``intellilog ab …``) and the admin routes
(``/v1/admin/experiments``). An experiment compares a **candidate** version with the
**baseline** (the version ``production`` points to when it starts):

- ``ab``: each order goes to one arm by a sticky hash (:mod:`server.experiments.assign`);
  ``split`` is the candidate's share;
- ``shadow``: every request is answered by the baseline and scored by the candidate off
  the response path; the candidate's answers are logged (arm ``shadow``), never returned.

At most one experiment per tenant runs (the store refuses a second). Starting points the
registry's ``candidate`` alias at the candidate, so every server loads it; stopping or
concluding removes that alias. Predictions are logged with arm ``baseline``,
``candidate`` or ``shadow`` while an experiment runs and belong to it by time
(``started_at`` … ``ended_at``) and version.

:func:`analyze` joins the experiment's predictions with their feedback and runs
:func:`training.abstats.analyze`; :func:`conclude` applies its recommendation: promote the
candidate to ``production`` (and archive the old baseline) or archive the candidate,
recording who and why in the registry's alias history and in the experiment.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
import numpy as np
from msgspec import Meta

from kernels.errors import ConfigError, ModelLoadError
from server.experiments import ARCHIVE, CONTINUE, MODES, PROMOTE
from server.models import model_spec
from server.monitoring.quality import tolerance_minutes_for
from server.store import Experiment, JoinedRow, Store
from training import abstats
from training.registry import MAX_REF_LEN, Registry

if TYPE_CHECKING:
    from server.config import Settings

__all__ = [
    "MAX_REASON",
    "MODES",
    "ExperimentConflict",
    "ExperimentNotFound",
    "StartOptions",
    "UnknownCandidate",
    "analyze",
    "conclude",
    "find",
    "running",
    "start",
    "start_options",
    "stop",
]


class ExperimentNotFound(ConfigError):
    """No experiment with that id (HTTP 404)."""


class ExperimentConflict(ConfigError):
    """The experiment's state forbids it: another one runs, or this one ended (HTTP 409)."""


class UnknownCandidate(ConfigError):
    """The candidate names no registered version (HTTP 422 at ``$.candidate``)."""


#: the longest reason an experiment or alias change records (HTTP bodies are held to it)
MAX_REASON = 1000


class StartOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What starting an experiment takes (the admin route's body, the CLI's flags)."""

    candidate: Annotated[str, Meta(max_length=MAX_REF_LEN)]
    mode: Annotated[str, Meta(max_length=32)] = "shadow"
    split: float = 0.5
    hours: float = 48.0
    mde: float = 0.05
    power: float = 0.8
    alpha: float = 0.05
    sequential: bool = True
    reason: Annotated[str, Meta(max_length=MAX_REASON)] = ""


def start_options(settings: Settings, **given: Any) -> StartOptions:
    """:class:`StartOptions` with the ``AB_*`` settings for what ``given`` leaves out (or
    gives as None): the CLI's flags and the admin route's defaults."""
    fields: dict[str, Any] = {
        "candidate": "",
        "mode": settings.ab_mode,
        "split": settings.ab_split,
        "hours": settings.ab_duration_hours,
        "mde": settings.ab_mde,
        "power": settings.ab_power,
        "alpha": settings.ab_alpha,
        "sequential": settings.ab_sequential,
    }
    fields.update((k, v) for k, v in given.items() if v is not None)
    return StartOptions(**fields)


def _new_id(now: float) -> str:
    return time.strftime("exp-%Y%m%d-%H%M%S", time.gmtime(now)) + f"-{os.urandom(2).hex()}"


def _check(opts: StartOptions) -> None:
    if opts.mode not in MODES:
        raise ConfigError(f"mode: must be one of {', '.join(MODES)}, got {opts.mode!r}")
    checks = (
        ("split", 0.0 < opts.split < 1.0, "between 0 and 1 (exclusive)"),
        ("hours", 0.0 < opts.hours <= 24 * 365, "> 0 and at most a year"),
        ("mde", 0.0 < opts.mde < 1.0, "between 0 and 1 (a relative MAE change)"),
        ("power", 0.0 < opts.power < 1.0, "between 0 and 1"),
        ("alpha", 0.0 < opts.alpha < 0.5, "between 0 and 0.5"),
    )
    for name, ok, rule in checks:
        if not ok:
            raise ConfigError(f"{name}: must be {rule}, got {getattr(opts, name)!r}")


async def running(store: Store, tenant: str) -> Experiment | None:
    """The tenant's running experiment, if any."""
    found = await store.experiments(tenant, "running")
    return found[0] if found else None


async def find(store: Store, tenant: str, experiment_id: str | None) -> Experiment:
    """The experiment ``experiment_id`` (the running one, else the latest, when None)."""
    every = await store.experiments(tenant)
    if experiment_id is None:
        if not every:
            raise ExperimentNotFound(
                f"no experiments for tenant {tenant!r}: start one with `ab start`"
            )
        return next((e for e in every if e.status == "running"), every[0])
    for e in every:
        if e.experiment_id == experiment_id:
            return e
    known = ", ".join(e.experiment_id for e in every[:10]) or "none"
    raise ExperimentNotFound(f"unknown experiment {experiment_id!r} (latest: {known})")


async def start(
    store: Store,
    registry: Registry,
    tenant: str,
    opts: StartOptions,
    *,
    by: str,
    now: float | None = None,
) -> Experiment:
    """Start an experiment of ``opts.candidate`` against the current production version."""
    _check(opts)
    now = time.time() if now is None else now
    baseline = registry.resolve("production")
    try:
        candidate = registry.resolve(opts.candidate)
    except ModelLoadError as exc:
        raise UnknownCandidate(f"$.candidate: {exc}") from None
    if candidate == baseline:
        raise ConfigError(f"candidate: {candidate} is the production version already")
    b_spec = model_spec(registry.manifest(baseline), baseline)
    c_spec = model_spec(registry.manifest(candidate), candidate)
    if b_spec.hash != c_spec.hash:
        raise ConfigError(
            f"candidate: {candidate} was trained with spec {c_spec.hash}, production "
            f"({baseline}) with {b_spec.hash}; one server serves one spec"
        )
    registry.verify(candidate)
    current = await running(store, tenant)
    if current is not None:
        raise ExperimentConflict(
            f"experiment {current.experiment_id} is running ({current.candidate_version} vs "
            f"{current.baseline_version}); stop or conclude it first"
        )
    exp = Experiment(
        experiment_id=_new_id(now),
        tenant=tenant,
        mode=opts.mode,
        baseline_version=baseline,
        candidate_version=candidate,
        split=opts.split if opts.mode == "ab" else 0.0,
        status="running",
        started_at=now,
        planned_hours=opts.hours,
        updated_at=now,
        options={
            "mde": opts.mde,
            "power": opts.power,
            "alpha": opts.alpha,
            "sequential": opts.sequential,
            "started_by": by,
            "reason": opts.reason,
        },
    )
    await store.save_experiment(exp, new=True)
    registry.promote(candidate, "candidate", by=by, reason=f"experiment {exp.experiment_id}")
    return exp


async def stop(
    store: Store,
    registry: Registry,
    tenant: str,
    experiment_id: str | None,
    *,
    by: str,
    reason: str = "",
    now: float | None = None,
) -> Experiment:
    """End a running experiment without a decision (the candidate alias is removed)."""
    exp = await find(store, tenant, experiment_id)
    if exp.status != "running":
        raise ExperimentConflict(f"experiment {exp.experiment_id} is {exp.status}, not running")
    now = time.time() if now is None else now
    ended = msgspec.structs.replace(
        exp,
        status="stopped",
        ended_at=now,
        updated_at=now,
        reason=reason or f"stopped by {by}",
    )
    await store.save_experiment(ended, new=False)
    _drop_candidate_alias(registry, exp, by, f"experiment {exp.experiment_id} stopped")
    return ended


def _drop_candidate_alias(registry: Registry, exp: Experiment, by: str, why: str) -> None:
    if registry.aliases().get("candidate") == exp.candidate_version:
        registry.unset("candidate", by=by, reason=why)


def _latest_per_order(rows: Sequence[JoinedRow]) -> dict[str, JoinedRow]:
    out: dict[str, JoinedRow] = {}
    for r in rows:  # oldest first: the last one wins
        if r.order_id:
            out[r.order_id] = r
    return out


def _arm(rows: Sequence[JoinedRow]) -> abstats.ArmData:
    def col(name: str) -> np.ndarray:
        return np.fromiter((getattr(r, name) for r in rows), dtype=np.float64, count=len(rows))

    return abstats.ArmData(eta=col("eta"), p10=col("p10"), p90=col("p90"), actual=col("actual"))


def split_arms(
    exp: Experiment, rows: Sequence[JoinedRow]
) -> tuple[abstats.ArmData, abstats.ArmData]:
    """The experiment's (baseline, candidate) rows: for ``ab`` each arm's own deliveries;
    for ``shadow`` the deliveries both versions scored, aligned row by row."""
    base = [r for r in rows if r.arm == "baseline" and r.model_version == exp.baseline_version]
    other = "candidate" if exp.mode == "ab" else "shadow"
    cand = [r for r in rows if r.arm == other and r.model_version == exp.candidate_version]
    if exp.mode == "ab":
        return _arm(base), _arm(cand)
    b, c = _latest_per_order(base), _latest_per_order(cand)
    both = sorted(set(b) & set(c))
    return _arm([b[o] for o in both]), _arm([c[o] for o in both])


async def analyze(
    store: Store,
    registry: Registry,
    exp: Experiment,
    *,
    sequential: bool | None = None,
    now: float | None = None,
) -> abstats.Analysis:
    """The experiment's analysis so far (see :func:`training.abstats.analyze`)."""
    now = time.time() if now is None else now
    rows = await store.joined(exp.tenant, exp.started_at, exp.ended_at)
    baseline, candidate = split_arms(exp, rows)
    spec = model_spec(registry.manifest(exp.baseline_version), exp.baseline_version)
    opts: dict[str, Any] = exp.options
    finished = exp.status != "running" or now >= exp.started_at + exp.planned_hours * 3600
    return abstats.analyze(
        exp.mode,  # type: ignore[arg-type]
        baseline,
        candidate,
        tolerance=tolerance_minutes_for(spec),
        alpha=float(opts.get("alpha", 0.05)),
        power=float(opts.get("power", 0.8)),
        mde=float(opts.get("mde", 0.05)),
        sequential=bool(opts.get("sequential", True)) if sequential is None else sequential,
        finished=finished,
    )


async def conclude(
    store: Store,
    registry: Registry,
    tenant: str,
    experiment_id: str | None,
    *,
    by: str,
    decision: str | None = None,
    reason: str = "",
    now: float | None = None,
) -> tuple[Experiment, abstats.Analysis]:
    """Apply the analysis' recommendation (or ``decision``, a human's override with a
    ``reason``): promote the candidate to production and archive the old baseline, or
    archive the candidate; end the experiment. ``continue_testing`` is refused."""
    exp = await find(store, tenant, experiment_id)
    if exp.status == "concluded":
        raise ExperimentConflict(
            f"experiment {exp.experiment_id} is concluded already ({exp.decision})"
        )
    now = time.time() if now is None else now
    result = await analyze(store, registry, exp, now=now)
    if decision is not None:
        if decision not in (PROMOTE, ARCHIVE):
            raise ConfigError(f"decision: must be {PROMOTE} or {ARCHIVE}, got {decision!r}")
        if not reason:
            raise ConfigError("reason: overriding the analysis needs a reason")
        why = f"{decision} by {by}, overriding the analysis ({result.recommendation}): {reason}"
    else:
        decision = result.recommendation
        if decision == CONTINUE:
            raise ExperimentConflict(
                f"experiment {exp.experiment_id}: the analysis says {CONTINUE} "
                f"({result.reason}); wait, or pass a decision with a reason"
            )
        why = f"{decision}: {result.reason}" + (f" ({reason})" if reason else "")
    tag = f"experiment {exp.experiment_id}: {why}"
    _drop_candidate_alias(registry, exp, by, tag)
    if decision == PROMOTE:
        registry.promote(exp.candidate_version, "production", by=by, reason=tag)
        if exp.baseline_version not in registry.aliases().values():
            registry.archive(
                exp.baseline_version, f"replaced by {exp.candidate_version}: {tag}", by=by
            )
    elif exp.candidate_version not in registry.aliases().values():
        registry.archive(exp.candidate_version, tag, by=by)
    done = msgspec.structs.replace(
        exp,
        status="concluded",
        ended_at=exp.ended_at or now,
        updated_at=now,
        decision=decision,
        reason=why,
        options={**exp.options, "concluded_by": by},
    )
    await store.save_experiment(done, new=False)
    return done, result
