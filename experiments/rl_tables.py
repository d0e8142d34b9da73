"""Issue 14's tables on the tiny arithmetic task: GRPO against its SFT start, the policy-loss family, and precision.

Usage: python experiments/rl_tables.py [--tables headroom losses precision] [--seeds 0 1 2] [--rows grpo dapo ...]
           [--init RUN_DIR] [--results-dir results] [--reward-target 0.8] [--budget-steps 300] [--precision-steps 60]
           [--jobs 2] [--overwrite]

1. The SFT start: the CoT reasoner of ``paper_configs/tiny/coconut_arithmetic_cot.yaml`` (the Coconut table's CoT
   row: greedy accuracy ~0.98, but ~0.75 of its T = 1 samples are right), fitted once as
   ``checkpoints/coconut_arithmetic_cot_tiny/reproduce`` unless it exists or ``--init`` names a run.
2. Every row x seed is one ``latentlab fit`` of the row's tiny config with ``seed`` and ``reasoning.init_from`` set,
   as ``checkpoints/<config name>/seed<N>`` (headroom: the config's own budget) or ``seed<N>_steps<M>`` (the losses
   table: ``--budget-steps`` optimizer steps for every row; the precision table: ``--precision-steps``, shorter
   because fp16 autocast runs ~10x slower than fp32 on this CPU). A finished run is reused, a run that has
   a ``last.ckpt`` but did not finish is resumed, so an interrupted table continues where it stopped. ``--jobs 2``
   fits (and evaluates) two runs at once; each uses one thread (``trainer.num_threads`` of the tiny twins).
3. Every run, and the SFT start under each seed's sampling stream, is evaluated on the same 500 held-out questions
   with the row config's ``eval`` and ``sampling`` (8 samples a question at the rollout temperature: pass@1 and pass@8;
   plus greedy accuracy) into ``checkpoints/rl_tables_evals/<name>/<run>`` (``--evals-dir``; predictions are large).
4. Tables (Markdown + CSV + PNG) in ``<results>/``: ``rl_headroom`` (init vs GRPO, mean +- sd over seeds and each
   seed's gain), ``rl_policy_losses`` (final pass@1, pass@8, rollout batches until the 5-batch mean training reward
   first reaches ``--reward-target``, mean clip / mask fraction, collapsed runs) and ``rl_precision`` (final pass@1,
   the mu / pi_old mismatch logged on every batch, skipped fp16 steps, and the mismatch distribution of the SFT start
   under each precision, measured here on 64 training prompts x 8 rollouts).

"Collapsed" (documented here, the table repeats it): the run's final sampled pass@1 is more than 0.05 below its
initialisation's under the same seed, or its last-5-batch training reward is below half its best 5-batch mean.
Nothing in latentlab imports this file.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from latentlab.configs import load_config, project_root
from latentlab.errors import ConfigError, LatentLabError
from latentlab.eval.report import write_table
from latentlab.io import refuse_existing, write_bytes, write_json
from latentlab.tasks import task_of
from latentlab.training import fit

REPO = project_root(Path(__file__).resolve().parent)
SFT_CONFIG = "paper_configs/tiny/coconut_arithmetic_cot.yaml"
SFT_RUN = "reproduce"
SMOOTH = 5
"""Batches in the moving mean of the training reward (steps to target, collapse)."""
COLLAPSE_DROP = 0.05
"""A final pass@1 this far below the initialisation's counts as collapsed."""


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    config: str
    diagnostic: str
    """The logged fraction this row's loss reports: clip_fraction, mask_fraction or beyond_delta_fraction."""


ROWS: dict[str, Row] = {
    row.key: row
    for row in (
        Row("grpo", "GRPO", "paper_configs/tiny/grpo_arithmetic.yaml", "clip_fraction"),
        Row("dapo", "DAPO", "paper_configs/tiny/grpo_arithmetic_dapo.yaml", "clip_fraction"),
        Row("dr_grpo", "Dr.GRPO", "paper_configs/tiny/grpo_arithmetic_dr_grpo.yaml", "clip_fraction"),
        Row("gspo", "GSPO", "paper_configs/tiny/grpo_arithmetic_gspo.yaml", "clip_fraction"),
        Row("dppo_tv", "DPPO binary-TV", "paper_configs/tiny/grpo_arithmetic_dppo_tv.yaml", "mask_fraction"),
        Row("dppo_topk_kl", "DPPO top-K KL", "paper_configs/tiny/grpo_arithmetic_dppo_topk_kl.yaml", "mask_fraction"),
        Row("drpo", "DRPO", "paper_configs/tiny/grpo_arithmetic_drpo.yaml", "beyond_delta_fraction"),
        Row("bf16", "bf16 rollout + train", "paper_configs/tiny/grpo_arithmetic_bf16.yaml", "clip_fraction"),
        Row("fp16", "fp16 rollout + train", "paper_configs/tiny/grpo_arithmetic_fp16.yaml", "clip_fraction"),
    )
}
TABLE_ROWS = {
    "headroom": ("grpo",),
    "losses": ("grpo", "dapo", "dr_grpo", "gspo", "dppo_tv", "dppo_topk_kl", "drpo"),
    "precision": ("grpo", "bf16", "fp16"),
}
PRECISION_LABEL = {"grpo": "fp32 rollout + train"}


# ---------------------------------------------------------------------------------------------------------------------
# Runs and their evaluations


def _finished(run_dir: Path) -> bool:
    return (run_dir / "last.ckpt").is_file() and (run_dir / "metrics.json").is_file()


def sft_start(init: str | None) -> Path:
    """The SFT run GRPO starts from: ``init``, else the SFT config's ``reproduce`` run (fitted when missing)."""
    if init is not None:
        path = Path(init) if Path(init).is_absolute() else REPO / init
        if not _finished(path):
            raise ConfigError(f"--init {init}: not a finished run (no last.ckpt and metrics.json in {path})")
        return path
    config = load_config(REPO / SFT_CONFIG)
    run_dir = REPO / config.output_dir / config.name / SFT_RUN
    if _finished(run_dir):
        return run_dir
    print(f"fitting the SFT start {SFT_CONFIG} -> {run_dir}", flush=True)
    _fit_run(config, run_dir)
    return run_dir


def row_config(row: Row, seed: int, init_dir: Path, **overrides):
    return load_config(REPO / row.config, {"seed": seed, "reasoning.init_from": str(init_dir), **overrides})


def run_name(seed: int, steps: int | None) -> str:
    """``seed<N>``, or ``seed<N>_steps<M>`` for a run of another budget than its config's."""
    return f"seed{seed}" + (f"_steps{steps}" if steps else "")


def job_overrides(steps: int | None) -> dict:
    return {"trainer.max_steps": steps} if steps else {}


def _fit_run(config, run_dir: Path) -> None:
    """Fit the run at ``run_dir``, or resume it from its ``last.ckpt`` (a pool worker: top level, so a spawned child
    can import it; the config travels pickled)."""
    resume = run_dir if (run_dir / "last.ckpt").is_file() else None
    fit(config, run_name=None if resume else run_dir.name, resume=resume)


def _run_all(work, jobs: list[tuple], workers: int) -> None:
    """``work(*job)`` for every job: in a pool of ``workers`` spawned processes, or here when one is enough."""
    if workers > 1 and len(jobs) > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            pool.starmap(work, jobs, chunksize=1)
    else:
        for job in jobs:
            work(*job)


def train_all(jobs: list[tuple[Row, int, int | None]], init_dir: Path, workers: int) -> dict[tuple, tuple[Path, float]]:
    """Fit (or resume) every unfinished job, ``workers`` at a time; returns each job's run directory and fit seconds.

    Each run uses its config's ``trainer.num_threads`` (1 in the tiny twins), so two workers use the two cores.
    """
    todo = []
    places = {}
    for row, seed, steps in jobs:
        config = row_config(row, seed, init_dir, **job_overrides(steps))
        run_dir = REPO / config.output_dir / config.name / run_name(seed, steps)
        places[(row.key, seed, steps)] = run_dir
        if not _finished(run_dir):
            print(f"{row.label} seed {seed}: fitting {run_dir}", flush=True)
            todo.append((config, run_dir))
    _run_all(_fit_run, todo, workers)
    out = {}
    for key, run_dir in places.items():
        if not _finished(run_dir):
            raise LatentLabError(f"{run_dir}: the run did not finish (see its logs); rerun the same command to resume")
        seconds = float(json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))["wall_time_s"])
        out[key] = (run_dir, seconds)
    return out


def _summary_row(out_dir: Path) -> dict:
    return json.loads((out_dir / "summary.json").read_text(encoding="utf-8"))["rows"][0]


def _evaluate_run(config, checkpoint: Path, out_dir: Path) -> None:
    """Evaluate one finished run into ``out_dir`` (a pool worker, as ``_fit_run``); one thread, as the runs fit."""
    import torch

    torch.set_num_threads(config.trainer.num_threads or 1)
    task_of(config).evaluate(config, checkpoint=checkpoint, out_dir=out_dir, overwrite=False)


def evaluate(row: Row, seed: int, init_dir: Path, checkpoint: Path | None, out_dir: Path) -> dict:
    """One summary row: the run at ``checkpoint`` (None: the SFT start) on the row config's held-out questions."""
    if not (out_dir / "summary.json").is_file():
        config = row_config(row, seed, init_dir)
        if checkpoint is None:
            from latentlab.reasoning.evaluate import evaluate_cot

            evaluate_cot(config, checkpoint=init_dir, out_dir=out_dir, overwrite=False)
        else:
            _evaluate_run(config, checkpoint, out_dir)
    return _summary_row(out_dir)


def evaluate_all(jobs: list[tuple[Row, int, Path, Path]], init_dir: Path, workers: int) -> list[dict]:
    """``evaluate`` of every (row, seed, run_dir, out_dir), ``workers`` at a time; rows in the order given."""
    todo = [
        (row_config(row, seed, init_dir), run_dir, out)
        for row, seed, run_dir, out in jobs
        if not (out / "summary.json").is_file()
    ]
    _run_all(_evaluate_run, todo, workers)
    return [_summary_row(out) for *_, out in jobs]


# ---------------------------------------------------------------------------------------------------------------------
# Curves and summaries


def train_curve(run_dir: Path) -> list[dict[str, float]]:
    """The logged rows of a run (Lightning's CSVLogger), numeric values only, in step order."""
    with (run_dir / "logs" / "metrics.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    # A run resumed before training._merge_metrics dropped redone steps holds some steps twice: keep the later row.
    latest: dict[tuple, dict[str, float]] = {}
    for row in rows:
        values = {k: float(v) for k, v in row.items() if v not in ("", None)}
        if values:
            latest.pop((values.get("step"), frozenset(values)), None)
            latest[(values.get("step"), frozenset(values))] = values
    return sorted(latest.values(), key=lambda values: values.get("step", -1.0))


def series(curve: list[dict[str, float]], key: str) -> tuple[list[float], list[float]]:
    points = [(row["step"], row[key]) for row in curve if key in row and "step" in row]
    return [p[0] for p in points], [p[1] for p in points]


def moving_mean(values: list[float], window: int = SMOOTH) -> list[float]:
    return [statistics.fmean(values[max(0, i - window + 1) : i + 1]) for i in range(len(values))]


def batches_to_target(rewards: list[float], target: float) -> int | None:
    """Rollout batches until the moving mean of the training reward first reaches ``target`` (None: never); only
    full windows count (a mean of the first one or two batches is noise, not a reached reward)."""
    for index, value in enumerate(moving_mean(rewards)):
        if index >= SMOOTH - 1 and value >= target:
            return index + 1
    return None


def collapsed(final_pass1: float, init_pass1: float, rewards: list[float]) -> bool:
    smooth = moving_mean(rewards)
    return final_pass1 < init_pass1 - COLLAPSE_DROP or (bool(smooth) and smooth[-1] < 0.5 * max(smooth))


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(values: list[float], digits: int = 3) -> str:
    mean, sd = mean_sd(values)
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def logged_mean(curve: list[dict[str, float]], key: str) -> float:
    values = [v for v in series(curve, key)[1] if math.isfinite(v)]
    return statistics.fmean(values) if values else float("nan")


# ---------------------------------------------------------------------------------------------------------------------
# The mismatch distribution of one model under a precision (the FP16 paper's figure)


def measure_mismatch(init_dir: Path, row: Row, prompts: int = 64, group: int = 8) -> dict:
    """Roll out the SFT start under the row's rollout precision and score it again under its training precision.

    Returns per-token (mu, pi) probabilities of the sampled tokens and per-sequence log pi(y) / mu(y).
    """
    import torch

    from latentlab.reasoning.data import load_train_val
    from latentlab.rl.module import GRPOModule
    from latentlab.rl.rollout import mismatch

    # one rollout batch of all the prompts, more samples each than a training batch
    shape = {"advantage.group_size": group, "rl.prompts_per_step": prompts, "rl.minibatch_size": None}
    config = row_config(row, 0, init_dir, **shape)
    module = GRPOModule(config)
    module.load_reasoner_from(init_dir)
    module.policy.eval()
    train_set, _ = load_train_val(config)
    batch = train_set[:prompts]
    with torch.no_grad():
        data, _ = module._rollout([ex.question for ex in batch], [ex.answer for ex in batch])
    rolled = data["rollouts"]
    mask = rolled.mask
    mu, pi = rolled.tempered_logprobs, data["old_logp"]
    gap = mismatch(mu, pi, mask)
    return {
        "mu": mu[mask].exp().tolist(),
        "pi": pi[mask].exp().tolist(),
        "log_ratio": gap["log_ratio"].tolist(),
        "mean_abs_prob_diff": float(gap["mean_abs_prob_diff"]),
        "max_abs_prob_diff": float(gap["max_abs_prob_diff"]),
        "log_ratio_std": float(gap["log_ratio_std"]),
    }


# ---------------------------------------------------------------------------------------------------------------------
# Plots


def _png(figure) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def curves_png(runs: dict[str, list[list[dict[str, float]]]], title: str, init_pass1: float | None = None) -> bytes:
    """Training reward (5-batch mean) and greedy val accuracy against rollout batches, one colour per row."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4), layout="constrained")
    left, right = figure.subplots(1, 2)
    colours = {}
    for index, (label, curves) in enumerate(runs.items()):
        colour = colours.setdefault(label, f"C{index % 10}")
        for seed, curve in enumerate(curves):
            steps, rewards = series(curve, "train/reward_mean")
            left.plot(steps, moving_mean(rewards), color=colour, alpha=0.8, label=label if seed == 0 else None)
            steps, accuracy = series(curve, "val/accuracy")
            right.plot(steps, accuracy, color=colour, marker="o", alpha=0.8, label=label if seed == 0 else None)
    left.set(xlabel="rollout batch", ylabel=f"training reward ({SMOOTH}-batch mean)", title="reward")
    right.set(xlabel="rollout batch", ylabel="greedy accuracy, 128 val questions", title="held-out pass@1 (greedy)")
    if init_pass1 is not None:
        left.axhline(init_pass1, color="grey", linestyle="--", label="SFT start, sampled pass@1")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.suptitle(title)
    return _png(figure)


def mismatch_png(measured: dict[str, dict]) -> bytes:
    """Per-token pi against mu (scatter) and the per-sequence log-ratio histogram, one panel column per precision."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4.5 * len(measured), 7.5), layout="constrained")
    axes = figure.subplots(2, len(measured), squeeze=False)
    for column, (label, data) in enumerate(measured.items()):
        top, bottom = axes[0][column], axes[1][column]
        top.scatter(data["mu"], data["pi"], s=2, alpha=0.4)
        top.plot([0, 1], [0, 1], color="grey", linewidth=0.8)
        top.set(xlabel="mu(y_t), rollout", ylabel="pi_old(y_t), training", title=label)
        bottom.hist(data["log_ratio"], bins=40)
        bottom.set(
            xlabel="log pi(y) / mu(y) per sequence",
            ylabel="sequences",
            title=f"std {data['log_ratio_std']:.2e}\nmean |pi - mu| {data['mean_abs_prob_diff']:.2e}",
        )
    figure.suptitle("Training-inference mismatch of the SFT start (64 prompts x 8 rollouts)")
    return _png(figure)


# ---------------------------------------------------------------------------------------------------------------------
# The tables


def run_tables(
    tables: list[str],
    seeds: list[int],
    rows: list[str] | None,
    init: str | None,
    results_dir: str,
    reward_target: float,
    overwrite: bool,
    budget_steps: int = 300,
    workers: int = 1,
    evals_dir: str = "checkpoints/rl_tables_evals",
    precision_steps: int = 60,
) -> dict[str, list[dict]]:
    unknown = [key for key in rows or [] if key not in ROWS]
    if unknown:
        raise ConfigError(f"--rows: unknown {unknown} (known: {', '.join(ROWS)})")
    out = Path(results_dir) if Path(results_dir).is_absolute() else REPO / results_dir
    stems = {"headroom": "rl_headroom", "losses": "rl_policy_losses", "precision": "rl_precision"}
    for table in tables:  # refuse before any training spends time
        refuse_existing(out / f"{stems[table]}.md", overwrite)
    for key in rows or []:
        if not any(key in TABLE_ROWS[t] for t in tables):
            raise ConfigError(f"--rows {key}: not a row of the tables {tables}")
    for key in {k for t in tables for k in TABLE_ROWS[t]}:
        load_config(REPO / ROWS[key].config)  # every row's config is valid before the first fit
    init_dir = sft_start(init)
    command = "python experiments/rl_tables.py --tables " + " ".join(tables) + " --seeds " + " ".join(map(str, seeds))
    command += f" --reward-target {reward_target} --budget-steps {budget_steps} --precision-steps {precision_steps}"
    command += f" --rows {' '.join(rows)}" if rows else ""
    evals = Path(evals_dir) if Path(evals_dir).is_absolute() else REPO / evals_dir  # big: beside the runs, untracked
    # The SFT start under each seed's sampling stream (the same questions and draws every row is compared on).
    init_rows = {
        seed: evaluate(ROWS["grpo"], seed, init_dir, None, evals / "sft_start" / f"seed{seed}") for seed in seeds
    }
    init_pass1 = {seed: r["pass@1"] for seed, r in init_rows.items()}
    print("SFT start: sampled pass@1 " + fmt(list(init_pass1.values())), flush=True)
    wanted = [k for k in ROWS if any(k in TABLE_ROWS[t] for t in tables) and (rows is None or k in rows)]
    # the headroom table runs each row's own budget; losses --budget-steps; precision --precision-steps (fp16
    # autocast has no fast CPU kernels: ~10x slower than fp32 here, so its table runs a shorter budget on CPU)
    budgets = {"headroom": None, "losses": budget_steps, "precision": precision_steps}
    jobs = sorted(
        {(key, seed, budgets[t]) for t in tables for key in TABLE_ROWS[t] if key in wanted for seed in seeds},
        key=lambda job: (list(ROWS).index(job[0]), job[2] or 0, job[1]),
    )
    trained = train_all([(ROWS[key], seed, steps) for key, seed, steps in jobs], init_dir, workers)
    eval_jobs = []
    for key, seed, steps in jobs:
        name = row_config(ROWS[key], seed, init_dir).name
        run_dir = trained[(key, seed, steps)][0]
        eval_jobs.append((ROWS[key], seed, run_dir, evals / name / run_name(seed, steps)))
    scores = evaluate_all(eval_jobs, init_dir, workers)
    results: dict[tuple, dict] = {}
    for (key, seed, steps), scored in zip(jobs, scores):
        row = ROWS[key]
        run_dir, fit_s = trained[(key, seed, steps)]
        curve = train_curve(run_dir)
        rewards = series(curve, "train/reward_mean")[1]
        entry = results.setdefault((key, steps), {"row": row, "steps": steps, "seeds": []})
        entry["seeds"].append(
            {
                "seed": seed,
                "eval": scored,
                "curve": curve,
                "fit_s": fit_s,
                "to_target": batches_to_target(rewards, reward_target),
                "collapsed": collapsed(scored["pass@1"], init_pass1[seed], rewards),
                "diagnostic": logged_mean(curve, f"train/{row.diagnostic}"),
                "run_dir": run_dir,
            }
        )
        print(
            f"{row.label} seed {seed}{f' ({steps} steps)' if steps else ''}: pass@1 {scored['pass@1']:.3f} "
            f"(start {init_pass1[seed]:.3f}), fit {fit_s:.0f}s",
            flush=True,
        )
    written = {}
    sft_steps = json.loads((init_dir / "metrics.json").read_text(encoding="utf-8"))["global_step"]
    shown = init_dir.relative_to(REPO) if init_dir.is_relative_to(REPO) else init_dir
    header = {"reward_target": reward_target, "seeds": seeds, "sft_start": str(shown), "sft_steps": sft_steps}

    def of(table: str) -> list[dict]:
        return [results[(k, budgets[table])] for k in TABLE_ROWS[table] if (k, budgets[table]) in results]

    if "headroom" in tables and of("headroom"):
        written["headroom"] = headroom_table(of("headroom")[0], init_rows, out / stems["headroom"], command, header)
    if "losses" in tables:
        written["losses"] = losses_table(of("losses"), init_pass1, out / stems["losses"], command, budget_steps)
    if "precision" in tables:
        keys = [k for k in TABLE_ROWS["precision"] if (k, budgets["precision"]) in results]
        measured = {_precision_label(ROWS[k]): measure_mismatch(init_dir, ROWS[k]) for k in keys}
        written["precision"] = precision_table(
            of("precision"), measured, init_pass1, out / stems["precision"], command, precision_steps
        )
    for table in written:  # what made each table, beside it
        settings = header | {"command": command, "budget_steps": budgets[table]}
        write_json(out / f"{stems[table]}.settings.json", settings)
    return written


def _precision_label(row: Row) -> str:
    return PRECISION_LABEL.get(row.key, row.label)


def _values(per_seed: list[dict], key: str) -> list[float]:
    return [float(s["eval"][key]) for s in per_seed]


def headroom_table(result: dict, init_rows: dict[int, dict], stem: Path, command: str, header: dict) -> list[dict]:
    per_seed = result["seeds"]
    seeds = [s["seed"] for s in per_seed]
    starts = [init_rows[s] for s in seeds]
    gains = [s["eval"]["pass@1"] - init_rows[s["seed"]]["pass@1"] for s in per_seed]

    def line(label: str, scored: list[dict], extra: dict) -> dict:
        return {
            "method": label,
            "pass@1": fmt([r["pass@1"] for r in scored]),
            "pass@8": fmt([r["pass@8"] for r in scored]),
            "greedy_accuracy": fmt([r["accuracy"] for r in scored]),
            "sample_reasoning_tokens": fmt([r["sample_reasoning_tokens_mean"] for r in scored], 1),
            "pass@1_per_seed": " / ".join(f"{r['pass@1']:.3f}" for r in scored),
            **extra,
        }

    rows = [
        line(f"SFT start (CoT, {header['sft_steps']} steps)", starts, {"gain_per_seed": "", "fit_s": ""}),
        line(
            "GRPO",
            [s["eval"] for s in per_seed],
            {
                "gain_per_seed": " / ".join(f"{g:+.3f}" for g in gains),
                "fit_s": fmt([s["fit_s"] for s in per_seed], 0),
            },
        ),
    ]
    title = (
        f"GRPO from an SFT start with headroom: held-out pass@1 over {len(seeds)} seeds (mean ± sd), "
        f"{starts[0]['questions']} test questions x 8 samples at T = 1"
    )
    write_table(rows, stem, title, command=command)
    runs = {"GRPO": [s["curve"] for s in per_seed]}
    write_bytes(stem.with_suffix(".png"), curves_png(runs, title, statistics.fmean(r["pass@1"] for r in starts)))
    return rows


def _outcome(label: str, per_seed: list[dict], init_pass1: dict[int, float], middle: dict) -> dict:
    """A comparison row: final pass@1 and its gain over the start, the table's own columns, collapses, fit time."""
    return {
        "method": label,
        "pass@1": fmt(_values(per_seed, "pass@1")),
        "gain_pass@1": fmt([s["eval"]["pass@1"] - init_pass1[s["seed"]] for s in per_seed]),
        **middle,
        "collapsed": f"{sum(s['collapsed'] for s in per_seed)}/{len(per_seed)}",
        "fit_s": fmt([s["fit_s"] for s in per_seed], 0),
    }


def _mean_logged(curves: list[list[dict[str, float]]], key: str) -> float:
    return statistics.fmean(logged_mean(curve, key) for curve in curves)


def losses_table(
    results: list[dict], init_pass1: dict[int, float], stem: Path, command: str, budget_steps: int
) -> list[dict]:
    rows = []
    for result in results:
        row, per_seed = result["row"], result["seeds"]
        reached = [s["to_target"] for s in per_seed]
        rows.append(
            _outcome(
                row.label,
                per_seed,
                init_pass1,
                {
                    "pass@8": fmt(_values(per_seed, "pass@8")),
                    "batches_to_target": " / ".join("never" if r is None else str(r) for r in reached),
                    "clip_or_mask": f"{row.diagnostic.removesuffix('_fraction')} "
                    f"{statistics.fmean(s['diagnostic'] for s in per_seed):.4f}",
                },
            )
        )
    title = (
        f"Policy losses on the tiny arithmetic task: same SFT start, budget ({budget_steps} optimizer steps) and "
        "seeds for every row (mean ± sd)"
    )
    write_table(rows, stem, title, command=command)
    runs = {r["row"].label: [s["curve"] for s in r["seeds"]] for r in results}
    write_bytes(stem.with_suffix(".png"), curves_png(runs, title))
    return rows


def precision_table(
    results: list[dict],
    measured: dict[str, dict],
    init_pass1: dict[int, float],
    stem: Path,
    command: str,
    budget_steps: int,
) -> list[dict]:
    rows = []
    for result in results:
        row, per_seed = result["row"], result["seeds"]
        label = _precision_label(row)
        curves = [s["curve"] for s in per_seed]
        rows.append(
            _outcome(
                label,
                per_seed,
                init_pass1,
                {
                    "train_mean_abs_prob_diff": f"{_mean_logged(curves, 'train/mismatch_prob_diff'):.2e}",
                    "train_log_ratio_std": f"{_mean_logged(curves, 'train/mismatch_log_ratio_std'):.2e}",
                    "start_mean_abs_prob_diff": f"{measured[label]['mean_abs_prob_diff']:.2e}",
                    "start_log_ratio_std": f"{measured[label]['log_ratio_std']:.2e}",
                    "skipped_steps": " / ".join(str(int(series(c, "train/skipped_steps")[1][-1])) for c in curves),
                },
            )
        )
    title = (
        f"Rollout and training precision ({budget_steps} optimizer steps): final pass@1 and the mu / pi_old mismatch "
        "(mean ± sd over seeds)"
    )
    write_table(rows, stem, title, command=command)
    write_bytes(stem.with_suffix(".png"), mismatch_png(measured))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", nargs="+", choices=sorted(TABLE_ROWS), default=["headroom", "losses", "precision"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", default=None, help=f"row keys (default: all of the tables): {list(ROWS)}")
    parser.add_argument("--init", default=None, help="a finished SFT run to start from (default: fit the SFT config)")
    parser.add_argument("--results-dir", default="results")
    parser.add_argument("--reward-target", type=float, default=0.8, help="training reward for batches_to_target")
    parser.add_argument("--overwrite", action="store_true", help="replace existing tables (runs are reused)")
    parser.add_argument("--budget-steps", type=int, default=300, help="optimizer steps of the losses runs")
    parser.add_argument("--precision-steps", type=int, default=60, help="optimizer steps of the precision runs")
    parser.add_argument("--jobs", type=int, default=1, help="runs fitted / evaluated at once (1 thread each)")
    parser.add_argument("--evals-dir", default="checkpoints/rl_tables_evals", help="where the evaluations go")
    args = parser.parse_args(argv)
    started = time.time()
    try:
        if len(set(args.seeds)) != len(args.seeds) or any(s < 0 for s in args.seeds):
            raise ConfigError(f"--seeds: expected distinct non-negative integers, got {args.seeds}")
        if not 0 < args.reward_target <= 1:
            raise ConfigError(f"--reward-target: expected a reward in (0, 1], got {args.reward_target}")
        for flag, value in (("--budget-steps", args.budget_steps), ("--precision-steps", args.precision_steps)):
            if value < 1:
                raise ConfigError(f"{flag}: expected a number of optimizer steps >= 1, got {value}")
        if args.jobs < 1:
            raise ConfigError(f"--jobs: expected >= 1, got {args.jobs}")
        run_tables(
            args.tables,
            args.seeds,
            args.rows,
            args.init,
            args.results_dir,
            args.reward_target,
            args.overwrite,
            budget_steps=args.budget_steps,
            workers=args.jobs,
            evals_dir=args.evals_dir,
            precision_steps=args.precision_steps,
        )
    except LatentLabError as err:
        print(f"rl_tables: error: {err}", file=sys.stderr)
        return 2
    print(f"done in {time.time() - started:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
