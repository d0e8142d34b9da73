"""benchmarks/timing.py, the interleaving and median/spread helpers every benchmark uses, against hand values.

benchmarks/ is a folder of scripts, not a package, so the module is loaded from its file path.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

TIMING_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "timing.py"


def _load_timing():
    spec = importlib.util.spec_from_file_location("benchmarks_timing", TIMING_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there while the class is created
    spec.loader.exec_module(module)
    return module


timing = _load_timing()


def test_spread_of_four_values_interpolates_the_quartiles():
    # Sorted 1, 2, 3, 4: median (2 + 3) / 2 = 2.5; q1 at position 0.25 * 3 = 0.75 -> 1 + 0.75 = 1.75;
    # q3 at position 2.25 -> 3 + 0.25 = 3.25 (numpy's default linear interpolation).
    result = timing.spread([4.0, 1.0, 3.0, 2.0])
    assert result == timing.Spread(median=2.5, q1=1.75, q3=3.25, low=1.0, high=4.0, n=4)
    assert result.format(".2f") == "2.50 (IQR 1.75-3.25, min-max 1.00-4.00, n=4)"


def test_spread_of_odd_count_and_of_one_value():
    # The spread of the run-to-run ratios quoted for compressor_throughput.py: sorted 0.91, 0.95, 1.07, 1.17.
    assert timing.spread([0.91, 1.07, 0.95, 1.17]) == pytest.approx(
        timing.Spread(median=1.01, q1=0.94, q3=1.095, low=0.91, high=1.17, n=4)
    )
    assert timing.spread([5, 1, 3, 2, 4]) == timing.Spread(3.0, 2.0, 4.0, 1.0, 5.0, 5)
    assert timing.spread([7]) == timing.Spread(7.0, 7.0, 7.0, 7.0, 7.0, 1)
    with pytest.raises(ValueError, match="at least one"):
        timing.spread([])


def test_ratios_are_taken_per_round():
    # Round-wise 2/1, 6/3, 3/2 -> median 2 of [1.5, 2, 2]; a ratio of medians (3/2 = 1.5) would differ.
    assert timing.ratios([2.0, 6.0, 3.0], [1.0, 3.0, 2.0]) == [2.0, 2.0, 1.5]
    assert timing.spread(timing.ratios([2.0, 6.0, 3.0], [1.0, 3.0, 2.0])).median == 2.0
    with pytest.raises(ValueError, match="one per round"):
        timing.ratios([1.0], [1.0, 2.0])


def test_round_orders_are_seeded_shuffles_of_every_arm():
    orders = timing.round_orders(["a", "b", "c"], repeats=20, seed=3)
    assert len(orders) == 20 and all(sorted(order) == ["a", "b", "c"] for order in orders)
    assert len({tuple(order) for order in orders}) > 1  # not one fixed order
    assert orders == timing.round_orders(["a", "b", "c"], repeats=20, seed=3)
    assert orders != timing.round_orders(["a", "b", "c"], repeats=20, seed=4)
    with pytest.raises(ValueError, match="repeats=0"):
        timing.round_orders(["a"], repeats=0)


def test_interleaved_runs_every_arm_once_a_round_after_the_warm_up():
    calls: list[str] = []
    syncs: list[int] = []
    arms = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times = timing.interleaved(arms, repeats=6, seed=1, warmup=1, sync=lambda: syncs.append(1))
    assert calls[:2] == ["a", "b"]  # the untimed warm-up round
    timed_calls = calls[2:]
    expected = [name for order in timing.round_orders(["a", "b"], 6, seed=1) for name in order]
    assert timed_calls == expected
    assert all(sorted(timed_calls[i : i + 2]) == ["a", "b"] for i in range(0, 12, 2))  # A and B alternate by round
    assert set(times) == {"a", "b"} and all(len(v) == 6 and min(v) >= 0 for v in times.values())
    assert len(syncs) == 2 * 12  # before and after every timed call
