"""Issue 15's tables on the tiny arithmetic task: RL on latent thoughts against its supervised start, and ablations.

Usage: python experiments/latent_rl_tables.py [--tables main ablations] [--seeds 0 1 2] [--rows latent_grpo ...]
           [--budget-steps 300] [--results-dir results] [--evals-dir checkpoints/latent_rl_tables_evals] [--jobs 2]
           [--overwrite]

1. The supervised starts, each fitted once as ``checkpoints/<config name>/reproduce`` unless it exists: the CoT
   reasoner (``paper_configs/tiny/coconut_arithmetic_cot.yaml``) and, from it, the Latent-SFT reasoner
   (``paper_configs/tiny/latent_sft_arithmetic.yaml``).
2. Every RL row x seed is one ``latentlab fit`` of the row's tiny config with ``seed``, ``reasoning.init_from`` and
   ``--budget-steps`` optimizer steps (300: the same for every row; SofT-GRPO's 35-slot thinking blocks make its
   batches ~3x slower than discrete GRPO's on this CPU), as ``checkpoints/<config name>/seed<N>_steps<M>`` (the
   discrete GRPO runs of ``experiments/rl_tables.py --tables losses`` are reused); a finished run is reused and an
   interrupted one resumed
   (``experiments/rl_tables.py`` fits and evaluates them: the same workers). ``--jobs 2`` runs two at once, one
   thread each.
3. Every run, and each start once (the first seed's sampling stream, as that row's policy before any update), is
   evaluated on the same first 200 held-out questions with 32 samples a question under the row's own sampling (Latent-GRPO: Gumbel thoughts, then tokens at the row's
   temperature; discrete GRPO: tokens) for the unbiased pass@k, k = 1, 2, 4, 8, 16, 32; plus greedy accuracy and, for
   latent rows, the greedy accuracy when every question reads another question's thoughts (the shuffled-thought
   control). Predictions go to ``--evals-dir`` (large, untracked).
4. Tables (Markdown + CSV + PNG) in ``<results>/``: ``latent_rl_main`` (each start against its RL row, mean ± sd over
   seeds and each seed's pass@1 gain; the plot is pass@k against k) and ``latent_rl_ablations`` (Latent-GRPO without
   each of its parts, from the same start and seeds).

``--rows`` picks a subset of rows (their starts are fitted as needed); a table shows the rows that ran.
Nothing in latentlab imports this file.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # rl_tables, beside this file (the scripts are no package)

import rl_tables  # noqa: E402
from rl_tables import REPO, Row, fmt, logged_mean, train_all, train_curve  # noqa: E402

from latentlab.configs import load_config  # noqa: E402
from latentlab.errors import ConfigError, LatentLabError  # noqa: E402
from latentlab.eval.report import write_table  # noqa: E402
from latentlab.io import refuse_existing, write_bytes, write_json  # noqa: E402

PASS_K = [1, 2, 4, 8, 16, 32]
SAMPLES = 32
QUESTIONS = 200
EVAL_OVERRIDES = {"sampling.num_samples": SAMPLES, "eval.pass_k": PASS_K, "eval.limit": QUESTIONS}
"""Every evaluation: the first 200 held-out questions x 32 samples (6,400 answers: a pass@1 standard error of about
0.01 from the questions alone; SofT-GRPO's ~35-slot thinking blocks take ~2.5 min an evaluation on one thread)."""


@dataclass(frozen=True)
class Start:
    """A supervised run an RL row starts from: its config, and the start it is fitted from (None: from scratch)."""

    key: str
    label: str
    config: str
    init: str | None = None


STARTS: dict[str, Start] = {
    s.key: s
    for s in (
        Start("cot", "CoT SFT", "paper_configs/tiny/coconut_arithmetic_cot.yaml"),
        Start("latent_sft", "Latent-SFT", "paper_configs/tiny/latent_sft_arithmetic.yaml", init="cot"),
        Start("atp_latent", "ATP-Latent SFT", "paper_configs/tiny/atp_latent_arithmetic.yaml", init="cot"),
    )
}


@dataclass(frozen=True)
class RLRow:
    row: Row
    start: str


def _row(key: str, label: str, config: str, start: str) -> RLRow:
    return RLRow(Row(key, label, f"paper_configs/tiny/{config}.yaml", "clip_fraction"), start)


ROWS: dict[str, RLRow] = {
    r.row.key: r
    for r in (
        _row("latent_grpo", "Latent-GRPO", "latent_grpo_arithmetic", "latent_sft"),
        _row("grpo", "GRPO (discrete)", "grpo_arithmetic", "cot"),
        _row("soft_grpo", "SofT-GRPO", "soft_grpo_arithmetic", "cot"),
        _row("atp_rl", "ATP-Latent RL", "atp_latent_rl_arithmetic", "atp_latent"),
        _row("atp_rl_no_coherence", "ATP-Latent RL, no coherence reward", "atp_latent_rl_arithmetic_no_coherence",
             "atp_latent"),
        _row("atp_rl_coherence_only", "ATP-Latent RL, coherence only", "atp_latent_rl_arithmetic_coherence_only",
             "atp_latent"),
        _row("latent_grpo_two_sided", "Latent-GRPO, two-sided noise", "latent_grpo_arithmetic_two_sided", "latent_sft"),
        _row("latent_grpo_no_masking", "Latent-GRPO, no invalid-sample masking", "latent_grpo_arithmetic_no_masking",
             "latent_sft"),
        _row("latent_grpo_no_first_token", "Latent-GRPO, no first-token selection",
             "latent_grpo_arithmetic_no_first_token", "latent_sft"),
    )
}  # fmt: skip
TABLE_ROWS = {
    "main": ("latent_grpo", "atp_rl", "soft_grpo", "grpo"),
    "ablations": (
        "latent_grpo",
        "latent_grpo_two_sided",
        "latent_grpo_no_masking",
        "latent_grpo_no_first_token",
        "atp_rl",
        "atp_rl_no_coherence",
        "atp_rl_coherence_only",
    ),
}
STEMS = {"main": "latent_rl_main", "ablations": "latent_rl_ablations"}


# ---------------------------------------------------------------------------------------------------------------------
# Starts, runs, evaluations


def fitted_start(key: str, done: dict[str, Path] | None = None) -> Path:
    """The ``reproduce`` run of a start (fitted, with its own start first, when missing)."""
    done = {} if done is None else done
    if key in done:
        return done[key]
    start = STARTS[key]
    overrides = {}
    if start.init is not None:
        overrides["reasoning.init_from"] = str(fitted_start(start.init, done))
    config = load_config(REPO / start.config, overrides)
    run_dir = REPO / config.output_dir / config.name / "reproduce"
    if not rl_tables._finished(run_dir):
        print(f"fitting the start {start.config} -> {run_dir}", flush=True)
        rl_tables._fit_run(config, run_dir)
    done[key] = run_dir
    return run_dir


def eval_config(rl_row: RLRow, seed: int, init_dir: Path):
    return rl_tables.row_config(rl_row.row, seed, init_dir, **EVAL_OVERRIDES)


def evaluate_all(jobs: list[tuple[RLRow, int, Path, Path | None, Path]], workers: int) -> list[dict]:
    """Each (row, seed, start dir, checkpoint or None for the start itself, out dir) evaluated under the row's config
    with 32 samples; ``workers`` at a time; summary rows in the order given."""
    todo = []
    for rl_row, seed, init_dir, checkpoint, out in jobs:
        if not (out / "summary.json").is_file():
            todo.append((eval_config(rl_row, seed, init_dir), checkpoint or init_dir, out))
    rl_tables._run_all(_evaluate, todo, workers)
    return [rl_tables._summary_row(out) for *_, out in jobs]


def _evaluate(config, checkpoint: Path, out_dir: Path) -> None:
    """One evaluation (a pool worker): a latent_rl run through its task; a start as the RL row's policy before any
    update (its weights under the row's config), so it is sampled as the row's rollouts are (SofT-GRPO's soft
    thinking, ATP-Latent's sampled z and stop)."""
    import torch

    from latentlab.reasoning.evaluate import evaluate_cot
    from latentlab.rl.module import GRPOModule

    if (checkpoint / "config.yaml").is_file() and "task: latent_rl" in (checkpoint / "config.yaml").read_text():
        rl_tables._evaluate_run(config, checkpoint, out_dir)
        return
    torch.set_num_threads(config.trainer.num_threads or 1)
    start = GRPOModule(config)
    start.load_reasoner_from(checkpoint)
    evaluate_cot(config, checkpoint=start.policy.eval(), out_dir=out_dir, overwrite=False)


# ---------------------------------------------------------------------------------------------------------------------
# Tables


def _fmt(values: list[float], digits: int = 3) -> str:
    """mean ± sd over seeds; one evaluation (a start) is its value alone."""
    return f"{values[0]:.{digits}f}" if len(values) == 1 else fmt(values, digits)


def _summary(label: str, scored: list[dict], extra: dict) -> dict:
    line = {"method": label, "seeds": len(scored)}
    for k in (1, 8, 32):
        line[f"pass@{k}"] = _fmt([r[f"pass@{k}"] for r in scored])
    line["reasoning_tokens"] = _fmt([r["sample_reasoning_tokens_mean"] for r in scored], 2)
    line["latent_tokens"] = _fmt([r["latent_tokens_mean"] for r in scored], 2)
    line["greedy_accuracy"] = _fmt([r["accuracy"] for r in scored])
    shuffled = [r.get("shuffled_thought_accuracy") for r in scored]
    line["shuffled_thought_accuracy"] = _fmt(shuffled) if all(v is not None for v in shuffled) else "n/a (no thoughts)"
    return line | extra


def passk_png(curves: dict[str, list[dict]], title: str) -> bytes:
    """Unbiased pass@k against k (mean over seeds, bars: sd), one line per method."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axis = figure.subplots()
    for index, (label, scored) in enumerate(curves.items()):
        means = [statistics.fmean(r[f"pass@{k}"] for r in scored) for k in PASS_K]
        sds = [statistics.stdev(r[f"pass@{k}"] for r in scored) if len(scored) > 1 else 0.0 for k in PASS_K]
        style = "--" if "SFT" in label else "-"
        axis.errorbar(PASS_K, means, yerr=sds, label=label, color=f"C{index // 2}", linestyle=style, marker="o")
    axis.set_xscale("log", base=2)
    axis.set_xticks(PASS_K, [str(k) for k in PASS_K])
    axis.set(xlabel="k (samples)", ylabel=f"unbiased pass@k, {QUESTIONS} test questions", title=title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return rl_tables._png(figure)


def run_tables(
    tables: list[str],
    seeds: list[int],
    rows: list[str] | None,
    results_dir: str,
    overwrite: bool,
    workers: int = 1,
    evals_dir: str = "checkpoints/latent_rl_tables_evals",
    budget_steps: int = 300,
) -> dict[str, list[dict]]:
    unknown = [key for key in rows or [] if key not in ROWS]
    if unknown:
        raise ConfigError(f"--rows: unknown {unknown} (known: {', '.join(ROWS)})")
    out = Path(results_dir) if Path(results_dir).is_absolute() else REPO / results_dir
    for table in tables:  # refuse before any training spends time
        refuse_existing(out / f"{STEMS[table]}.md", overwrite)
    wanted = [k for k in ROWS if any(k in TABLE_ROWS[t] for t in tables) and (rows is None or k in rows)]
    for key in wanted:
        load_config(REPO / ROWS[key].row.config)  # every row's config is valid before the first fit
    starts: dict[str, Path] = {}
    for key in sorted({ROWS[k].start for k in wanted}):
        fitted_start(key, starts)
    command = f"python experiments/latent_rl_tables.py --budget-steps {budget_steps} --tables " + " ".join(tables)
    command += " --seeds " + " ".join(map(str, seeds)) + (f" --rows {' '.join(rows)}" if rows else "")
    evals = Path(evals_dir) if Path(evals_dir).is_absolute() else REPO / evals_dir
    jobs = [(key, seed) for key in wanted for seed in seeds]
    trained = {}
    for start in sorted({ROWS[k].start for k in wanted}):  # train_all takes one start at a time
        mine = [(ROWS[k].row, s, budget_steps) for k, s in jobs if ROWS[k].start == start]
        trained |= train_all(mine, starts[start], workers)
    eval_jobs = []
    for key in wanted:  # each start once (the first seed's sampling stream), with its RL row's settings
        rl_row, init_dir = ROWS[key], starts[ROWS[key].start]
        name = load_config(REPO / rl_row.row.config).name
        eval_jobs.append((rl_row, seeds[0], init_dir, None, evals / f"{name}_start" / f"seed{seeds[0]}"))
        for seed in seeds:
            run_dir = trained[(key, seed, budget_steps)][0]
            eval_jobs.append((rl_row, seed, init_dir, run_dir, evals / name / run_dir.name))
    scores = iter(evaluate_all(eval_jobs, workers))
    results: dict[str, dict] = {}
    for key in wanted:
        start_score = next(scores)
        entry = results.setdefault(key, {"start": [start_score], "runs": []})
        for seed in seeds:
            run_score = next(scores)
            run_dir, fit_s = trained[(key, seed, budget_steps)]
            entry["runs"].append({"seed": seed, "eval": run_score, "fit_s": fit_s, "curve": train_curve(run_dir)})
            print(
                f"{ROWS[key].row.label} seed {seed}: pass@1 {run_score['pass@1']:.3f} (start "
                f"{start_score['pass@1']:.3f}), fit {fit_s:.0f}s",
                flush=True,
            )
    header = {"seeds": seeds, "samples": SAMPLES, "pass_k": PASS_K, "budget_steps": budget_steps, "command": command}
    header["starts"] = {k: str(p.relative_to(REPO) if p.is_relative_to(REPO) else p) for k, p in starts.items()}
    written = {}
    for table in tables:
        keys = [k for k in TABLE_ROWS[table] if k in results]
        if keys:
            written[table] = write(table, keys, results, out / STEMS[table], command, budget_steps)
            write_json(out / f"{STEMS[table]}.settings.json", header)
    return written


def _gains(result: dict) -> list[float]:
    """Each seed's pass@1 against its start's (evaluated once, on the first seed's sampling stream)."""
    return [r["eval"]["pass@1"] - result["start"][0]["pass@1"] for r in result["runs"]]


def write(
    table: str, keys: list[str], results: dict[str, dict], stem: Path, command: str, budget_steps: int = 300
) -> list[dict]:
    lines, curves = [], {}
    shown_starts = set()
    for key in keys:
        rl_row, result = ROWS[key], results[key]
        start_label = f"{STARTS[rl_row.start].label} (start of {rl_row.row.label})"
        if table == "main" or rl_row.start not in shown_starts:
            lines.append(_summary(start_label, result["start"], {"gain_pass@1_per_seed": "", "fit_s": ""}))
            curves[STARTS[rl_row.start].label + " start" + ("" if table == "ablations" else f" ({key})")] = result[
                "start"
            ]
            shown_starts.add(rl_row.start)
        runs = [r["eval"] for r in result["runs"]]
        extra = {
            "gain_pass@1_per_seed": " / ".join(f"{g:+.3f}" for g in _gains(result)),
            "fit_s": fmt([r["fit_s"] for r in result["runs"]], 0),
        }
        if table == "ablations":
            curves_ = [r["curve"] for r in result["runs"]]
            extra["train_invalid_fraction"] = (
                f"{statistics.fmean(logged_mean(c, 'train/invalid_fraction') for c in curves_):.3f}"
            )
            extra["train_no_exit_fraction"] = (
                f"{statistics.fmean(logged_mean(c, 'train/no_exit_fraction') for c in curves_):.3f}"
            )
        lines.append(_summary(rl_row.row.label, runs, extra))
        curves[rl_row.row.label] = runs
    n = results[keys[0]]["start"][0]["questions"]
    title = (
        f"RL on latent thoughts, tiny arithmetic: held-out unbiased pass@k over {len(results[keys[0]]['runs'])} seeds "
        f"(mean ± sd), {n} test questions x {SAMPLES} samples under each method's own sampling, {budget_steps} "
        "optimizer steps a run"
        if table == "main"
        else f"Ablations, each from its method's start: {n} test questions x {SAMPLES} samples, {budget_steps} steps"
    )
    write_table(lines, stem, title, command=command)
    write_bytes(stem.with_suffix(".png"), passk_png(curves, title.split(":")[0]))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", nargs="+", choices=sorted(TABLE_ROWS), default=["main", "ablations"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", default=None, help=f"row keys (default: all of the tables): {list(ROWS)}")
    parser.add_argument("--results-dir", default="results")
    parser.add_argument("--overwrite", action="store_true", help="replace existing tables (runs are reused)")
    parser.add_argument("--jobs", type=int, default=1, help="runs fitted / evaluated at once (1 thread each)")
    parser.add_argument("--evals-dir", default="checkpoints/latent_rl_tables_evals", help="where evaluations go")
    parser.add_argument("--budget-steps", type=int, default=300, help="optimizer steps of every run (same for all)")
    args = parser.parse_args(argv)
    started = time.time()
    try:
        if not args.seeds or len(set(args.seeds)) != len(args.seeds) or any(s < 0 for s in args.seeds):
            raise ConfigError(f"--seeds: expected distinct non-negative integers, got {args.seeds}")
        if args.jobs < 1:
            raise ConfigError(f"--jobs: expected >= 1, got {args.jobs}")
        if args.budget_steps < 1:
            raise ConfigError(f"--budget-steps: expected a number of optimizer steps >= 1, got {args.budget_steps}")
        run_tables(
            args.tables,
            args.seeds,
            args.rows,
            args.results_dir,
            args.overwrite,
            args.jobs,
            args.evals_dir,
            args.budget_steps,
        )
    except LatentLabError as err:
        print(f"latent_rl_tables: error: {err}", file=sys.stderr)
        return 2
    print(f"done in {time.time() - started:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
