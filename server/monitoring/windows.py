"""Window and cycle lengths as the CLI flags and settings write them (``15m``, ``24h``,
``7d``; ``weather=365d``). No Prometheus here: server.config validates settings with
these before prometheus-client may be imported (its multiprocess mode is read then)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from kernels.errors import ConfigError

__all__ = ["Window", "parse_cycles", "parse_window", "parse_windows"]

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0}
_WINDOW = re.compile(r"^([0-9]+)([smhd])$")


@dataclass(frozen=True, slots=True)
class Window:
    """A trailing window: its label as given (``"24h"``) and its length in seconds."""

    label: str
    seconds: float


def parse_window(text: str, name: str = "--window") -> Window:
    """``"15m"``, ``"1h"``, ``"24h"``, ``"7d"`` (a whole number and s, m, h or d).

    Raises ConfigError naming ``name`` (the flag or setting the value came from).
    """
    label = str(text).strip().lower()
    m = _WINDOW.match(label)
    seconds = int(m.group(1)) * _UNITS[m.group(2)] if m else 0.0
    if not seconds:
        raise ConfigError(
            f"{name}={text!r}: use a whole number > 0 and a unit s, m, h or d, e.g. 15m, 1h, "
            "24h, 7d"
        )
    return Window(label, seconds)


def parse_windows(texts: Iterable[str | Window], name: str = "--window") -> tuple[Window, ...]:
    """:func:`parse_window` of each; at least one, no label twice (ConfigError)."""
    out = tuple(t if isinstance(t, Window) else parse_window(t, name) for t in texts)
    if not out:
        raise ConfigError(f"{name}: give at least one window, e.g. 1h")
    labels = [w.label for w in out]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"{name}={','.join(labels)}: a window is given twice")
    return out


def parse_cycles(texts: Sequence[str] | None, name: str = "--cycle") -> dict[str, float]:
    """``["weather=365d", "promo=7d"]`` -> ``{"weather": 31536000.0, ...}`` (ConfigError)."""
    out: dict[str, float] = {}
    for text in texts or ():
        feature, sep, length = str(text).partition("=")
        if not sep or not feature.strip():
            raise ConfigError(f"{name}={text!r}: use FEATURE=LENGTH, e.g. weather=365d")
        out[feature.strip()] = parse_window(length, name).seconds
    return out
