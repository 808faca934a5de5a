"""``intellilog ab start | status | stop | list | analyze | conclude``.

Each verb opens the store at ``DATABASE_URL`` and the registry at ``MODEL_ARTIFACT_PATH``
(or ``--registry``), does one thing through :mod:`server.experiments.service` and closes
them. Running servers with ``ENABLE_AB_TESTING=true`` follow within
``RELOAD_INTERVAL_S``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import msgspec

from server.experiments import ARCHIVE, MODES, PROMOTE

if TYPE_CHECKING:
    from server.config import Settings
    from server.store import Experiment, Store
    from training.registry import Registry

__all__ = ["add_parser", "current_user", "experiment_dict"]


def experiment_dict(exp: Experiment) -> dict[str, Any]:
    """An experiment as JSON-ready builtins."""
    out: dict[str, Any] = msgspec.to_builtins(exp)
    return out


def _line(exp: Experiment) -> str:
    import time

    started = time.strftime("%Y-%m-%d %H:%M", time.gmtime(exp.started_at))
    split = f" split {exp.split:g}" if exp.mode == "ab" else ""
    end = f" -> {exp.decision}" if exp.decision else ""
    return (
        f"{exp.experiment_id}  {exp.status:9} {exp.mode:6}{split}  {exp.candidate_version} vs "
        f"{exp.baseline_version}  started {started} UTC for {exp.planned_hours:g} h{end}"
    )


def _run(
    args: argparse.Namespace,
    body: Callable[[Store, Registry, Settings], Coroutine[Any, Any, int]],
) -> int:
    from server.config import load_settings
    from server.store import open_store
    from training.registry import Registry

    settings = load_settings()
    registry = Registry(args.registry) if args.registry else Registry(settings.registry_path)

    async def go() -> int:
        async with await open_store(settings.database_url) as store:
            return await body(store, registry, settings)

    return asyncio.run(go())


def current_user() -> str:
    """Who runs this command, for the registry's and experiments' history."""
    import getpass
    import os

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def cmd_ab(args: argparse.Namespace) -> int:
    from server.experiments import service

    tenant_of: Callable[[Settings], str] = lambda s: args.tenant or s.tenant_id  # noqa: E731

    async def body(store: Store, registry: Registry, s: Settings) -> int:
        tenant = tenant_of(s)
        if args.verb == "start":
            opts = service.start_options(
                s,
                candidate=args.candidate,
                mode=args.mode,
                split=args.split,
                hours=args.hours,
                reason=args.reason,
            )
            exp = await service.start(store, registry, tenant, opts, by=current_user())
            return _show(args, exp, "started")
        if args.verb == "stop":
            exp = await service.stop(
                store, registry, tenant, args.experiment, by=current_user(), reason=args.reason
            )
            return _show(args, exp, "stopped")
        if args.verb == "list":
            every = await store.experiments(tenant)
            if args.json:
                print(json.dumps([experiment_dict(e) for e in every], indent=2))
            elif not every:
                print(f"no experiments for tenant {tenant!r}")
            for e in [] if args.json else every:
                print(_line(e))
            return 0
        exp = await service.find(store, tenant, args.experiment)
        if args.verb == "status":
            return _show(args, exp, None)
        if args.verb == "analyze":
            seq = None if args.test is None else args.test == "sequential"
            result = await service.analyze(store, registry, exp, sequential=seq)
            if args.json:
                print(
                    json.dumps(
                        {"experiment": experiment_dict(exp), "analysis": result.to_dict()}, indent=2
                    )
                )
            else:
                print(_line(exp))
                print(result.format_text())
            return 0
        # conclude
        done, result = await service.conclude(
            store,
            registry,
            tenant,
            args.experiment,
            by=current_user(),
            decision=args.decision,
            reason=args.reason,
        )
        if args.json:
            print(
                json.dumps(
                    {"experiment": experiment_dict(done), "analysis": result.to_dict()}, indent=2
                )
            )
        else:
            print(_line(done))
            print(done.reason)
        return 0

    return _run(args, body)


def _show(args: argparse.Namespace, exp: Experiment, what: str | None) -> int:
    if args.json:
        print(json.dumps(experiment_dict(exp), indent=2))
    else:
        print((f"{what}: " if what else "") + _line(exp))
    return 0


def add_parser(sub: Any, reg_opt: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register ``ab`` and its verbs on the CLI's subparsers."""
    ab = sub.add_parser(
        "ab",
        help="A/B and shadow tests of a candidate model against production",
        description="Experiments are stored in DATABASE_URL; servers with "
        "ENABLE_AB_TESTING=true route by the running one. Defaults come from AB_MODE, "
        "AB_SPLIT, AB_DURATION_HOURS, AB_MDE, AB_POWER, AB_ALPHA and AB_SEQUENTIAL.",
    )
    verbs = ab.add_subparsers(dest="verb", required=True, metavar="VERB")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--tenant", help="default: $TENANT_ID")
        p.add_argument("--json", action="store_true")
        reg_opt(p)
        p.set_defaults(fn=cmd_ab)

    st = verbs.add_parser("start", help="start testing CANDIDATE against production")
    st.add_argument("candidate", help="version or alias of the candidate")
    st.add_argument("--mode", choices=MODES, help="default: $AB_MODE (shadow)")
    st.add_argument("--split", type=float, help="ab: the candidate's share of orders")
    st.add_argument("--hours", type=float, help="planned duration (default $AB_DURATION_HOURS)")
    st.add_argument("--reason", default="", help="recorded with the experiment")
    common(st)
    for name, text in (
        ("status", "the running (or latest) experiment"),
        ("stop", "end an experiment without a decision"),
        ("analyze", "per-arm quality, the test and the recommendation"),
        ("conclude", "apply the recommendation: promote or archive the candidate"),
    ):
        p = verbs.add_parser(name, help=text)
        p.add_argument("experiment", nargs="?", help="experiment id (default: the running one)")
        if name in ("stop", "conclude"):
            p.add_argument("--reason", default="", help="recorded in the history")
        if name == "analyze":
            p.add_argument(
                "--test",
                choices=("sequential", "fixed"),
                help="default: the experiment's (AB_SEQUENTIAL when it started)",
            )
        if name == "conclude":
            p.add_argument(
                "--decision",
                choices=(PROMOTE, ARCHIVE),
                help="override the analysis (needs --reason)",
            )
        common(p)
    ls = verbs.add_parser("list", help="every experiment, newest first")
    common(ls)
