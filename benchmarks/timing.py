"""The timing the benchmarks share (they run as scripts, so this folder is on sys.path).

Arms of a comparison are interleaved: every round runs each arm once, in a seeded shuffled order, so slow drift of
the machine (clock boost, thermal state, a neighbour's load, caches another arm left warm) hits all arms alike
instead of whichever was timed last. Ratios are taken per round, between measurements made seconds apart, and
reported as their median with the spread over rounds, never as one number.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Spread:
    """Median, quartiles (``q1``, ``q3``), extremes (``low``, ``high``) and count ``n`` of repeated measurements."""

    median: float
    q1: float
    q3: float
    low: float
    high: float
    n: int

    def format(self, spec: str = ".3f") -> str:
        """'median (IQR q1-q3, min-max low-high, n=N)', every number formatted with ``spec``."""
        return (
            f"{self.median:{spec}} (IQR {self.q1:{spec}}-{self.q3:{spec}}, "
            f"min-max {self.low:{spec}}-{self.high:{spec}}, n={self.n})"
        )


def spread(values: Sequence[float]) -> Spread:
    """Median and spread of ``values``; quartiles interpolate linearly between order statistics (numpy's default).

    >>> spread([4.0, 1.0, 3.0, 2.0])
    Spread(median=2.5, q1=1.75, q3=3.25, low=1.0, high=4.0, n=4)
    """
    values = [float(value) for value in values]
    if not values:
        raise ValueError("spread() needs at least one value")
    if len(values) == 1:
        (only,) = values
        return Spread(only, only, only, only, only, 1)
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return Spread(median, q1, q3, min(values), max(values), len(values))


def ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """Per-round ratios ``numerators[i] / denominators[i]`` of two arms timed in the same rounds."""
    if len(numerators) != len(denominators):
        raise ValueError(f"{len(numerators)} numerators but {len(denominators)} denominators; expected one per round")
    return [a / b for a, b in zip(numerators, denominators)]


def round_orders(names: Sequence[str], repeats: int, seed: int = 0) -> list[list[str]]:
    """The order of the arms in each of ``repeats`` rounds: a fresh shuffle per round, the same for the same seed."""
    if repeats < 1:
        raise ValueError(f"repeats={repeats} is invalid; expected at least 1 round")
    rng = random.Random(seed)
    return [rng.sample(list(names), len(names)) for _ in range(repeats)]


def interleaved(
    arms: Mapping[str, Callable[[], object]],
    repeats: int,
    seed: int = 0,
    warmup: int = 1,
    sync: Callable[[], object] | None = None,
) -> dict[str, list[float]]:
    """Wall seconds of each arm in each round: ``{name: [seconds in round 0, round 1, ...]}``.

    ``warmup`` untimed rounds (each arm once) come first; then ``repeats`` timed rounds in ``round_orders``.
    ``sync`` (e.g. ``torch.cuda.synchronize``) is called before the clock starts and before it stops, so queued
    device work is counted in the arm that queued it.
    """
    for _ in range(warmup):
        for fn in arms.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in arms}
    for order in round_orders(list(arms), repeats, seed):
        for name in order:
            if sync is not None:
                sync()
            start = time.perf_counter()
            arms[name]()
            if sync is not None:
                sync()
            times[name].append(time.perf_counter() - start)
    return times


def write_report(out: Path, args: Any, machine: Mapping[str, Any], **sections: Any) -> None:
    """A benchmark's JSON report at ``out``: its arguments (paths as text), the machine, then ``sections``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "args": {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()},
        "machine": dict(machine),
        **sections,
    }
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")


def spread_summary(by_name: Mapping[str, Mapping[str, float]]) -> str:
    """``name median (IQR, min-max, n)`` per spread (``Spread`` fields), batched q/s to units, single-query times
    to the microsecond, other values to 2 decimals; joined by ``; ``."""
    parts = []
    for name, values in by_name.items():
        spec = ".0f" if name == "batch_qps" else ".3f" if name.startswith("single") else ".2f"
        parts.append(f"{name} {Spread(**values).format(spec)}")
    return "; ".join(parts)
