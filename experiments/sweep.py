"""Sweep one config over named variants: fit and evaluate each, and write results/sweeps/NAME.{md,csv,png}.

Usage:
  python experiments/sweep.py paper_configs/tiny/coconut_arithmetic.yaml --name coconut_schedule \
      --set reasoning.init_from=checkpoints/coconut_arithmetic_cot_tiny/reproduce \
      --variant "reasoning.curriculum.epochs_per_stage=1 trainer.max_epochs=4" \
      --variant "reasoning.curriculum.epochs_per_stage=3 trainer.max_epochs=12"

``--set`` applies to every variant; each ``--variant`` is one row, its space-separated KEY=VALUE pairs (values
parsed as YAML) on top. Each row's run is named ``NAME-<row number>`` under the config's output_dir. Reasoning
configs and latent-memory configs are each scored by their task (``latentlab.tasks``). Nothing in latentlab
imports this file.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from latentlab.configs import load_config, merge_pairs, parse_pairs, project_root
from latentlab.errors import ConfigError, LatentLabError
from latentlab.eval.report import PlotSpec, write_table
from latentlab.tasks import task_of
from latentlab.training import fit

REPO = project_root(Path(__file__).resolve().parent)


def _score(config, run_dir: Path, command: str) -> dict:
    rows = task_of(config).evaluate_run(config, run_dir, command)
    return {k: v for k, v in rows[0].items() if k != "method"}


def sweep(
    config_path: str | Path,
    name: str,
    variants: list[dict],
    common: dict | None = None,
    results_dir: str | Path = "results/sweeps",
    command: str | None = None,
) -> list[dict]:
    """Fit and score ``config_path`` under ``common`` + each variant; returns the rows (also written to disk)."""
    if not variants:
        raise ConfigError("sweep: give at least one --variant")
    configs = [load_config(config_path, {**(common or {}), **variant}) for variant in variants]  # all checked first
    results = []
    for number, (variant, config) in enumerate(zip(variants, configs), start=1):
        label = " ".join(f"{k.split('.')[-1]}={v}" for k, v in variant.items()) or "(base)"
        started = time.time()
        trained = fit(config, run_name=f"{name}-{number}")
        fit_seconds = time.time() - started
        started = time.time()
        row = {"variant": label, **_score(config, trained.run_dir, command or f"sweep {name}")}
        row.update(fit_s=round(fit_seconds, 1), eval_s=round(time.time() - started, 1), run_dir=str(trained.run_dir))
        results.append(row)
        shown = {k: v for k, v in row.items() if isinstance(v, float)}
        print(f"[sweep] {label}: {shown}", flush=True)
    out = Path(results_dir) if Path(results_dir).is_absolute() else REPO / results_dir
    metric = task_of(configs[0]).primary_metric
    write_table(
        results,
        out / name,
        f"Sweep {name} of {Path(config_path).name}",
        plot=PlotSpec(kind="bar", metrics=(metric,), label_column="variant"),
        command=command,
    )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--name", required=True, help="sweep name: run names and the results file stem")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE pairs for every variant")
    parser.add_argument("--variant", action="append", default=[], help="one row: KEY=VALUE pairs")
    parser.add_argument("--results-dir", default="results/sweeps")
    args = parser.parse_args(argv)
    command = "python experiments/sweep.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    try:
        common = merge_pairs(args.set, "--set")
        variants = [parse_pairs(text, f"--variant #{i + 1}") for i, text in enumerate(args.variant)]
        sweep(args.config, args.name, variants, common, args.results_dir, command)
    except LatentLabError as err:
        print(f"sweep: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
