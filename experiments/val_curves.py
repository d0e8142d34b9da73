"""Collect the validation rows of finished or stopped runs into one CSV: one line per run and validation.

Usage:
  python experiments/val_curves.py checkpoints/coconut_arithmetic_tiny/heldout checkpoints/c1long/atp_long-1 \
      --out results/sweeps/cpu/val_curves.csv

Reads each run's ``logs/metrics.csv`` (Lightning's CSVLogger) and keeps the rows that hold ``val/*`` metrics, with
the run's name (``<experiment>/<run>``), its epoch and global step. A run stopped half-way gives what it logged.
Nothing in latentlab imports this file.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from latentlab.errors import ConfigError, LatentLabError
from latentlab.eval.report import write_csv


def validation_rows(run_dir: Path) -> list[dict[str, str]]:
    log = run_dir / "logs" / "metrics.csv"
    if not log.is_file():
        raise ConfigError(f"{run_dir}: no logs/metrics.csv (expected a run directory written by `latentlab fit`)")
    with log.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    run = f"{run_dir.parent.name}/{run_dir.name}"
    out = []
    for row in rows:
        values = {k: v for k, v in row.items() if k.startswith("val/") and v not in ("", None)}
        if values:
            out.append({"run": run, "epoch": row.get("epoch", ""), "step": row.get("step", ""), **values})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories")
    parser.add_argument("--out", required=True, help="CSV file to write")
    args = parser.parse_args(argv)
    try:
        rows = [row for run in args.runs for row in validation_rows(Path(run))]
    except LatentLabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    columns = ["run", "epoch", "step"] + sorted({k for row in rows for k in row} - {"run", "epoch", "step"})
    out = write_csv(rows, Path(args.out), columns)
    print(f"{len(rows)} validation rows of {len(args.runs)} runs written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
