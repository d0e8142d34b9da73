"""Reproduce a paper table: fit every row's config, evaluate it, and write results/TABLE.{md,csv,png}.

Usage: python experiments/reproduce.py coconut_arithmetic [--scale tiny|paper] [--rows no_cot cot ...]
           [--set "trainer.accelerator=gpu trainer.precision=bf16-mixed"] [--run NAME] [--results-dir DIR]
           [--reuse no_cot=checkpoints/coconut_arithmetic_no_cot_tiny/reproduce ...]
The same function, ``reproduce(...)``, can be called from a notebook. Nothing in latentlab imports this file.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from latentlab.configs import load_config, merge_pairs, project_root
from latentlab.errors import ConfigError, LatentLabError
from latentlab.eval.report import write_table
from latentlab.tasks import task_of
from latentlab.training import fit, new_run_dir

REPO = project_root(Path(__file__).resolve().parent)


@dataclass(frozen=True)
class Row:
    """One table row: its config per scale, and the row whose trained run it starts from (per scale)."""

    key: str
    label: str
    configs: dict[str, str]
    init_from: dict[str, str] = field(default_factory=dict)
    """scale -> key of the row whose run directory becomes this row's ``init_from`` (its task's ``init_from_key``)."""


@dataclass(frozen=True)
class Table:
    title: str
    rows: tuple[Row, ...]


TABLES: dict[str, Table] = {
    "coconut_arithmetic": Table(
        title="Coconut Table 1 shape: accuracy and reasoning tokens (tiny: synthetic arithmetic; paper: GSM8k-Aug)",
        rows=(
            Row(
                "no_cot",
                "No-CoT",
                {
                    "tiny": "paper_configs/tiny/coconut_arithmetic_no_cot.yaml",
                    "paper": "paper_configs/reasoning/coconut_gsm8k_aug_gpt2_no_cot.yaml",
                },
            ),
            Row(
                "cot",
                "CoT",
                {
                    "tiny": "paper_configs/tiny/coconut_arithmetic_cot.yaml",
                    "paper": "paper_configs/reasoning/coconut_gsm8k_aug_gpt2_cot.yaml",
                },
            ),
            Row(
                "coconut",
                "Coconut",
                {
                    "tiny": "paper_configs/tiny/coconut_arithmetic.yaml",
                    "paper": "paper_configs/reasoning/coconut_gsm8k_aug_gpt2.yaml",
                },
                init_from={"tiny": "cot", "paper": "cot"},  # Coconut's GSM8k recipe starts from the CoT run
            ),
            Row(
                "atp_latent",
                "ATP-Latent",
                {
                    "tiny": "paper_configs/tiny/atp_latent_arithmetic.yaml",
                    "paper": "paper_configs/reasoning/atp_latent_gsm8k_aug_llama1b.yaml",
                },
                init_from={"tiny": "cot"},  # a tiny reasoner from scratch needs the CoT warm start; Llama does not
            ),
        ),
    ),
}


def _latest_run(name: str, output_dir: str) -> Path:
    """The newest run directory of an experiment name that has a last.ckpt."""
    root = Path(output_dir) if Path(output_dir).is_absolute() else REPO / output_dir
    runs = sorted((p for p in (root / name).glob("*") if (p / "last.ckpt").exists()), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise ConfigError(f"no trained run of '{name}' under {root}; run its row first (or include it in --rows)")
    return runs[-1]


def reproduce(
    table: str,
    scale: str = "tiny",
    rows: list[str] | None = None,
    overrides: dict | None = None,
    run_name: str | None = None,
    results_dir: str | Path = "results",
    reuse: dict[str, str | Path] | None = None,
) -> list[dict]:
    """Fit and evaluate the rows of ``table`` at ``scale``; returns the table rows (also written to results/).

    ``reuse``: row key -> a finished run directory of that row, evaluated again instead of trained (its fit time is
    the run's recorded ``wall_time_s``), so that changing one row does not retrain the others.
    """
    if table not in TABLES:
        raise ConfigError(f"unknown table '{table}' (known: {', '.join(sorted(TABLES))})")
    spec = TABLES[table]
    known = [row.key for row in spec.rows]
    unknown = [key for key in rows or [] if key not in known]
    if unknown:
        raise ConfigError(f"unknown rows {unknown} of table '{table}' (known: {', '.join(known)})")
    selected = [row for row in spec.rows if rows is None or row.key in rows]
    reused: dict[str, Path] = {}
    for key, value in (reuse or {}).items():
        if key not in [row.key for row in selected]:
            raise ConfigError(
                f"--reuse {key}=...: '{key}' is not a row of this run (rows: {[r.key for r in selected]})"
            )
        path = Path(value) if Path(value).is_absolute() else REPO / value
        if not (path / "last.ckpt").exists() or not (path / "metrics.json").exists():
            raise ConfigError(f"--reuse {key}={value}: not a finished run (no last.ckpt and metrics.json in {path})")
        reused[key] = path
    command = f"python experiments/reproduce.py {table} --scale {scale}" + (f" --rows {' '.join(rows)}" if rows else "")
    command += f" --run {run_name}" if run_name else ""
    if reused:
        command += " --reuse " + " ".join(f"{k}={v}" for k, v in (reuse or {}).items())
    if overrides:
        command += " --set " + shlex.quote(" ".join(f"{k}={json.dumps(v)}" for k, v in overrides.items()))
    if run_name is not None:  # refuse a used run name before the first row spends any time
        for row in selected:
            if scale in row.configs and row.key not in reused:
                new_run_dir(load_config(REPO / row.configs[scale], dict(overrides or {})), run_name)
    run_dirs: dict[str, Path] = {}
    results = []
    for row in selected:
        if scale not in row.configs:
            raise ConfigError(f"row '{row.key}' of table '{table}' has no {scale} config")
        row_overrides = dict(overrides or {})
        parent = row.init_from.get(scale)
        if parent is not None:
            if parent not in run_dirs:
                parent_config = load_config(REPO / next(r for r in spec.rows if r.key == parent).configs[scale])
                run_dirs[parent] = _latest_run(parent_config.name, parent_config.output_dir)
            row_overrides[task_of(load_config(REPO / row.configs[scale])).init_from_key] = str(run_dirs[parent])
        config = load_config(REPO / row.configs[scale], row_overrides)
        task = task_of(config)
        if row.key in reused:
            run_dir = reused[row.key]
            fit_seconds = float(json.loads((run_dir / "metrics.json").read_text())["wall_time_s"])
        else:
            started = time.time()
            run_dir = fit(config, run_name=run_name).run_dir
            fit_seconds = time.time() - started
        run_dirs[row.key] = run_dir
        started = time.time()
        result = dict(task.evaluate_run(config, run_dir, command)[0])
        result.update(
            method=row.label,
            fit_s=round(fit_seconds, 1),
            eval_s=round(time.time() - started, 1),
            run_dir=str(run_dir.relative_to(REPO) if run_dir.is_relative_to(REPO) else run_dir),
        )
        results.append(result)
        print(
            f"{row.label}: {task.primary_metric} {result[task.primary_metric]:.3f}, fit {fit_seconds:.0f}s", flush=True
        )
    stem = table if scale == "tiny" else f"{table}.{scale}"
    if rows:  # a partial run must not overwrite the whole table
        stem += "." + "_".join(row.key for row in selected)
    out = Path(results_dir) if Path(results_dir).is_absolute() else REPO / results_dir
    task = task_of(load_config(REPO / selected[0].configs[scale]))
    columns = [c for c in task.columns if any(c in r for r in results)]
    write_table(
        results,
        out / stem,
        f"{spec.title} [{scale}]",
        columns=columns + ["run_dir"],
        plot=task.plot(),
        command=command,
    )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", choices=sorted(TABLES))
    parser.add_argument("--scale", choices=["tiny", "paper"], default="tiny")
    parser.add_argument("--rows", nargs="+", default=None, help="row keys to run (default: all)")
    parser.add_argument("--run", default=None, help="run name of every row (default: a UTC timestamp)")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE config overrides for every row")
    parser.add_argument("--results-dir", default="results")
    parser.add_argument("--reuse", nargs="+", default=[], metavar="ROW=RUN_DIR", help="evaluate these runs, do not fit")
    args = parser.parse_args(argv)
    try:
        overrides = merge_pairs(args.set, "--set")
        reuse = {}
        for item in args.reuse:
            key, sep, path = item.partition("=")
            if not sep or not key or not path:
                raise ConfigError(f"--reuse {item!r}: expected ROW=RUN_DIR")
            reuse[key] = path
        reproduce(args.table, args.scale, args.rows, overrides, args.run, args.results_dir, reuse)
    except LatentLabError as err:
        print(f"reproduce: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
