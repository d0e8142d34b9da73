"""Evaluate one reasoner on the four low-difficulty math benchmarks of Latent-GRPO / ATP-Latent in one command.

Usage: python experiments/low_difficulty.py (--checkpoint RUN_DIR | --config YAML) [--limit N] [--name NAME]
           [--benchmarks paper_configs/reasoning/low_difficulty_benchmarks.yaml] [--results-dir results/low_difficulty]
           [--evals-dir checkpoints/low_difficulty_evals] [--set "KEY=VALUE ..."] [--overwrite]

The reasoner is a finished ``latent_cot`` or ``latent_rl`` run (``--checkpoint``: scored by its task as ``latentlab
evaluate`` scores it, with the ``eval`` and ``sampling`` settings of the run's own config.yaml), or an untrained one
built from an experiment YAML (``--config``, e.g. ``paper_configs/tiny/low_difficulty_smollm2.yaml``, the embedded
SmolLM2-135M-Instruct zero-shot; a ``reasoning.init_from`` in it is loaded, as ``fit`` would start from it).
``--set`` overrides keys of either config (``--set "sampling.max_new_tokens=128 eval.batch_size=16"``).

The benchmarks (name, source format, path) come from one YAML, ``--benchmarks``. GSM8K is GSM8k-Aug's ``test.txt``
(the 1,319 GSM8K test questions in the iCoT format), the file Coconut, ATP-Latent and Latent-GRPO evaluate GSM8K on.
A benchmark whose file is missing is skipped with a printed reason, and its table row says so. ``--limit N`` scores
the first N questions of each file, in the file's order (every question without it).

Each benchmark is one ``evaluate_cot`` into ``<evals-dir>/<name>/<benchmark>/`` (predictions and summary: untracked,
since predictions repeat the datasets' text). ``<results-dir>/<name>.{md,csv,png}`` and ``<name>.settings.json``
hold numbers only: accuracy (greedy pass@1; pass@1 over ``sampling.num_samples`` samples when that is above 1), its
95% interval (the Wilson score interval of k correct of n greedy answers; for sampled pass@1 a percentile bootstrap
over questions, since the samples of one question are not independent), and the mean latent and language tokens of
the greedy answers. Existing results are refused without ``--overwrite`` before anything is evaluated. Greedy answers,
the samples (seeded per batch from the config's seed) and the bootstrap (seeded by it too) repeat exactly for a fixed
seed. A notebook can call ``low_difficulty(from_config(...) or from_checkpoint(...), ...)`` too. Nothing in latentlab
imports this file.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import re
import shlex
import sys
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from latentlab.configs import ExperimentConfig, ReasoningDataConfig, load_config, merge_pairs, project_root
from latentlab.configs.loader import decode_utf8, safe_load_strict
from latentlab.configs.reasoning import SYNTHETIC_SOURCES
from latentlab.errors import ConfigError, DataError, LatentLabError
from latentlab.eval.report import PlotSpec, write_table
from latentlab.io import refuse_existing, write_json, write_text
from latentlab.reasoning.data import load_cot_split
from latentlab.training import git_commit

REPO = project_root(Path(__file__).resolve().parent)
BENCHMARKS = "paper_configs/reasoning/low_difficulty_benchmarks.yaml"
BENCHMARK_KEYS = ("name", "source", "path", "note")
COLUMNS = (
    "benchmark",
    "data",
    "questions",
    "accuracy",
    "ci95_low",
    "ci95_high",
    "latent_tokens_mean",
    "language_tokens_mean",
    "note",
)
Z_95 = 1.959963984540054
"""The standard normal's 97.5% quantile: a two-sided 95% interval."""
BOOTSTRAP_RESAMPLES = 2000
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
"""A results name: it becomes file names."""


def in_repo(path: str | Path) -> Path:
    """A path given on the command line or in the benchmark list; relative ones resolve against the project root."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else REPO / path


def shown(path: Path) -> str:
    """``path`` relative to the project root when inside it (no machine paths in committed results)."""
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


# ---------------------------------------------------------------------------------------------------------------------
# The benchmark list


@dataclass(frozen=True)
class Benchmark:
    """One entry of the benchmark list."""

    name: str
    """The table row, e.g. "GSM-Hard"."""
    source: str
    """The file's official format: a ``reasoning.data.source`` (and converter) name, e.g. "gsm_hard"."""
    path: str
    """The data file as the list gives it; relative to the project root."""
    note: str = ""
    """What a reader should know about this file (which copy, how it differs from the papers' copies)."""

    @property
    def key(self) -> str:
        """The benchmark's folder name: "GSM-Hard" -> "gsm_hard"."""
        return re.sub(r"[^a-z0-9]+", "_", self.name.lower()).strip("_")

    @property
    def file(self) -> Path:
        return in_repo(self.path)


def data_formats() -> list[str]:
    """The ``reasoning.data.source`` values that read a file (every one but the synthetic generators)."""
    allowed = typing.get_args(typing.get_type_hints(ReasoningDataConfig)["source"])
    return [source for source in allowed if source not in SYNTHETIC_SOURCES]


def read_benchmarks(path: str | Path) -> list[Benchmark]:
    """The list of a YAML ``benchmarks: [{name, source, path, note?}, ...]``.

    An unknown key (with the nearest valid one), a missing key, a source that is not a data format or a name given
    twice is a ``ConfigError`` naming the file and the entry. The data files themselves may be missing.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--benchmarks {path}: file not found (expected a YAML list of benchmarks)")
    try:
        data = safe_load_strict(decode_utf8(path.read_bytes(), path), str(path))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    entries = data.get("benchmarks") if isinstance(data, dict) else None
    if not isinstance(data, dict) or set(data) != {"benchmarks"} or not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path}: expected one key 'benchmarks' holding a non-empty list of {{name, source, path}}")
    formats = data_formats()
    benchmarks: list[Benchmark] = []
    for index, entry in enumerate(entries):
        where = f"{path}: benchmarks[{index}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected a mapping with {', '.join(BENCHMARK_KEYS)}, got {entry!r}")
        for key in entry:
            if key not in BENCHMARK_KEYS:
                near = difflib.get_close_matches(str(key), BENCHMARK_KEYS, n=1)
                hint = f"; did you mean '{near[0]}'?" if near else ""
                raise ConfigError(f"{where}: unknown key '{key}' (valid: {', '.join(BENCHMARK_KEYS)}){hint}")
        for key in ("name", "source", "path"):
            if not isinstance(entry.get(key), str) or not entry[key].strip():
                raise ConfigError(f"{where}: key '{key}' must be a non-empty string, got {entry.get(key)!r}")
        if not isinstance(entry.get("note", ""), str):
            raise ConfigError(f"{where}: key 'note' must be a string, got {entry['note']!r}")
        benchmark = Benchmark(**{key: entry[key].strip() for key in entry})
        where = f"{where} ({benchmark.name})"
        if benchmark.source not in formats:
            raise ConfigError(
                f"{where}: key 'source': {benchmark.source!r} is not a data format (known: {', '.join(formats)})"
            )
        if not benchmark.key or benchmark.key in [b.key for b in benchmarks]:
            raise ConfigError(f"{where}: key 'name': {benchmark.name!r} repeats an earlier benchmark's name")
        benchmarks.append(benchmark)
    return benchmarks


# ---------------------------------------------------------------------------------------------------------------------
# Intervals


def wilson_interval(correct: float, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of ``correct`` successes in ``n`` trials: (centre -/+ half) / (1 + z^2/n), with
    centre = p + z^2/2n and half = z sqrt(p(1 - p)/n + z^2/4n^2). Unlike p -/+ z sqrt(p(1 - p)/n) it stays inside
    [0, 1] and keeps a width at 0 or n correct, which is what 50 questions need."""
    if n < 1 or not 0 <= correct <= n:
        raise ValueError(f"wilson_interval needs 0 <= correct <= n and n >= 1, got correct={correct}, n={n}")
    p = correct / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # at 0 or n right the bound is exactly 0 or 1 (the formula leaves a rounding error there)
    return (0.0 if correct == 0 else centre - half), (1.0 if correct == n else centre + half)


def bootstrap_interval(
    scores: torch.Tensor, seed: int, resamples: int = BOOTSTRAP_RESAMPLES, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-question ``scores`` [Q] (e.g. the fraction of a question's
    samples that are right): ``resamples`` draws of Q questions with replacement from a generator seeded ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(len(scores), (resamples, len(scores)), generator=generator)  # [R, Q] question indices
    means = scores.double()[picks].mean(dim=1)  # [R]
    tail = (1 - level) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=torch.float64))
    return float(low), float(high)


# ---------------------------------------------------------------------------------------------------------------------
# The reasoner under test


@dataclass
class Reasoner:
    """What is evaluated: the config of its eval and sampling settings, and how one benchmark is scored."""

    config_file: Path
    """The YAML the benchmark configs are loaded from (the run's config.yaml, or --config)."""
    overrides: dict
    """--set, applied to that YAML under every benchmark's data keys."""
    config: ExperimentConfig
    """The YAML with the overrides: seed, eval and sampling settings."""
    label: str
    """The table's name for it until an evaluation says (a latent_rl run's own label comes from its task)."""
    origin: str
    """Where it comes from, as the command line says it: "--checkpoint RUN_DIR" or "--config YAML"."""
    default_name: str
    score: Callable[[ExperimentConfig, Path, str, bool], object] = dataclasses.field(repr=False)
    """(benchmark config, out_dir, command, overwrite) -> the evaluation, whose ``rows[0]`` is the summary row."""


def _reasoning_config(path: Path, overrides: dict) -> ExperimentConfig:
    config = load_config(path, overrides)
    if not hasattr(config, "reasoning"):
        raise ConfigError(f"{path}: key 'task' is {config.task!r}; expected a reasoner (latent_cot or latent_rl)")
    return config


def from_checkpoint(checkpoint: str | Path, overrides: dict) -> Reasoner:
    """A finished latent_cot or latent_rl run (its directory, or a .ckpt beside its config.yaml), scored by its task."""
    from latentlab.reasoning.evaluate import METHOD_LABELS, read_run
    from latentlab.tasks import task_of

    path = in_repo(checkpoint)
    run_dir = path if path.is_dir() else path.parent
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise ConfigError(
            f"--checkpoint {checkpoint}: no config.yaml in {run_dir} (expected a run directory `fit` wrote)"
        )
    config = _reasoning_config(config_file, overrides)
    read_run(path, config.task)  # a missing last.ckpt is an error now, not after the first benchmark
    task = task_of(config)

    def score(bench: ExperimentConfig, out_dir: Path, command: str, overwrite: bool):
        return task.evaluate(bench, checkpoint=path, out_dir=out_dir, command=command, overwrite=overwrite)

    method = config.reasoning.method
    return Reasoner(
        config_file=config_file,
        overrides=overrides,
        config=config,
        label=METHOD_LABELS.get(method, method),
        origin=f"--checkpoint {shown(path)}",
        default_name=f"{config.name}-{run_dir.name}",
        score=score,
    )


def from_config(config_path: str | Path, overrides: dict) -> Reasoner:
    """The reasoner of an experiment YAML as `fit` would start it (seeded; ``reasoning.init_from`` loaded), untrained.

    The model is built at the first benchmark, after every check has passed.
    """
    from latentlab.reasoning.evaluate import METHOD_LABELS

    config_file = in_repo(config_path)
    config = _reasoning_config(config_file, overrides)
    r = config.reasoning
    if r.init_from:
        state = f"init_from {r.init_from}"
    elif r.train_from_scratch or (isinstance(r.reasoner, dict) and "tiny" in r.reasoner):
        state = "random weights"
    else:
        state = "zero-shot"
    label = f"{METHOD_LABELS.get(r.method, r.method)} ({state})"
    built = []

    def score(bench: ExperimentConfig, out_dir: Path, command: str, overwrite: bool):
        from latentlab.reasoning.evaluate import evaluate_cot

        if not built:
            built.append(build_untrained(config))
        return evaluate_cot(
            bench, checkpoint=built[0], out_dir=out_dir, command=command, overwrite=overwrite, label=label
        )

    return Reasoner(
        config_file=config_file,
        overrides=overrides,
        config=config,
        label=label,
        origin=f"--config {shown(config_file)}",
        default_name=config.name,
        score=score,
    )


def build_untrained(config: ExperimentConfig):
    """A ``LatentCoTModule`` as ``fit`` builds it before its first step: seeded, ``reasoning.init_from`` loaded."""
    import lightning as L

    from latentlab.configs import resolve_path
    from latentlab.reasoning.module import LatentCoTModule

    L.seed_everything(config.seed, workers=True, verbose=False)  # a train_from_scratch init repeats
    module = LatentCoTModule(config)
    if config.reasoning.init_from:
        module.load_reasoner_from(resolve_path(config, "reasoning.init_from", config.reasoning.init_from))
    return module.eval()


def benchmark_config(reasoner: Reasoner, benchmark: Benchmark, limit: int | None) -> ExperimentConfig:
    """The reasoner's YAML with its data replaced by the benchmark's file (test split, first ``limit`` questions)."""
    data = {
        "reasoning.data.source": benchmark.source,
        "reasoning.data.train": None,
        "reasoning.data.val": None,
        "reasoning.data.test": str(benchmark.file),
        "eval.split": "test",
        "eval.limit": limit,
    }
    return load_config(reasoner.config_file, {**reasoner.overrides, **data})


# ---------------------------------------------------------------------------------------------------------------------
# Rows, notes, the run


def _scores(out_dir: Path, sampled: bool) -> torch.Tensor:
    """Per-question score [Q] from evaluate_cot's predictions: greedy correctness, or the fraction of right samples."""
    lines = (out_dir / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    if sampled:
        return torch.tensor([r["samples_correct"] / r["samples"] for r in records], dtype=torch.float64)
    return torch.tensor([float(r["correct"]) for r in records], dtype=torch.float64)


def evaluated_row(benchmark: Benchmark, summary: dict, scores: torch.Tensor, sampled: bool, seed: int) -> dict:
    """The table row of one evaluated benchmark from its summary row and per-question scores."""
    n = len(scores)
    if sampled:
        low, high = bootstrap_interval(scores, seed)
    else:
        low, high = wilson_interval(float(scores.sum()), n)
    return {
        "benchmark": benchmark.name,
        "data": benchmark.path,
        "questions": n,
        "accuracy": summary["sample_accuracy"] if sampled else summary["accuracy"],
        "ci95_low": low,
        "ci95_high": high,
        "latent_tokens_mean": summary["latent_tokens_mean"],
        "language_tokens_mean": summary["language_tokens_mean"],
        "note": "",
    }


def skipped_row(benchmark: Benchmark) -> dict:
    return {column: None for column in COLUMNS} | {
        "benchmark": benchmark.name,
        "data": benchmark.path,
        "note": f"skipped: {benchmark.path} not found",
    }


def notes(config: ExperimentConfig, rows: list[dict], benchmarks: list[Benchmark], benchmarks_file: str) -> str:
    """What the columns mean, how uncertain they are at this many questions, and which file each benchmark is."""
    sampling = config.sampling
    if sampling.num_samples > 1:
        accuracy = (
            f"pass@1 over {sampling.num_samples} samples a question (temperature {sampling.temperature}, top_k "
            f"{sampling.top_k}, top_p {sampling.top_p}; mean fraction of right samples)"
        )
        interval = f"percentile bootstrap over questions ({BOOTSTRAP_RESAMPLES} resamples, seed {config.seed})"
    else:
        accuracy = "greedy pass@1 (one greedy answer a question)"
        interval = "Wilson score interval of k right of n"
    lines = [
        "",
        f"- accuracy: {accuracy}; answers match the gold number after normalisation (`answers_match`). The answer "
        + (
            'is what follows the last "###" or, in a text without it, the last number (eval.answer_extraction: '
            "last_number)."
            if config.eval.answer_extraction == "last_number"
            else 'is what follows the last "###", else the whole text.'
        ),
        f"- ci95_low, ci95_high: 95% interval, {interval}.",
    ]
    counts = [row["questions"] for row in rows if row["questions"]]
    if counts:
        n = min(counts)
        low, high = wilson_interval(n / 2, n)
        lines.append(
            f"- How uncertain: with {n} questions a 95% interval reaches up to ±{(high - low) / 2:.3f} around the "
            "accuracy (at 0.5); a difference between two reasoners smaller than that is not resolved at this size."
        )
    lines.append(
        f"- latent_tokens_mean, language_tokens_mean: per greedy answer, continuous thoughts fed and language tokens "
        f"generated before EOS (at most sampling.max_new_tokens = {sampling.max_new_tokens})."
    )
    lines.append(f"- Benchmarks (`{benchmarks_file}`), each file in its own order:")
    lines += [f"  - {b.name} (`{b.source}`, `{b.path}`){': ' + b.note if b.note else ''}" for b in benchmarks]
    return "\n".join(lines) + "\n"


def low_difficulty(
    reasoner: Reasoner,
    benchmarks_file: str | Path = BENCHMARKS,
    limit: int | None = None,
    name: str | None = None,
    results_dir: str | Path = "results/low_difficulty",
    evals_dir: str | Path = "checkpoints/low_difficulty_evals",
    overwrite: bool = False,
    command: str | None = None,
) -> list[dict]:
    """Score ``reasoner`` on every benchmark of ``benchmarks_file``; returns the table rows (also written to disk)."""
    started = time.time()
    benchmarks_path = in_repo(benchmarks_file)
    benchmarks = read_benchmarks(benchmarks_path)
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit: expected a number of questions >= 1, got {limit}")
    name = name or reasoner.default_name
    if not NAME.fullmatch(name):
        raise ConfigError(f"--name {name!r}: expected letters, digits, '.', '_' or '-' (it names the result files)")
    out, evals = in_repo(results_dir), in_repo(evals_dir) / name
    stem = out / name
    outputs = [stem.parent / f"{stem.name}{suffix}" for suffix in (".md", ".csv", ".png", ".settings.json")]
    for target in outputs + [evals / b.key for b in benchmarks]:  # refuse before anything is evaluated
        refuse_existing(target, overwrite)
    command = command or f"python experiments/low_difficulty.py {reasoner.origin}" + (
        f" --limit {limit}" if limit else ""
    )
    present = [b for b in benchmarks if b.file.exists()]
    # every config and data file is read before a model runs: a malformed file fails now, naming its record
    configs = {b.key: benchmark_config(reasoner, b, limit) for b in present}
    sizes = {key: len(load_cot_split(config, "test")) for key, config in configs.items()}
    for benchmark in present:
        if not sizes[benchmark.key]:
            raise DataError(f"{benchmark.file}: no questions (benchmark {benchmark.name}, source {benchmark.source})")
    if reasoner.config.trainer.num_threads:
        torch.set_num_threads(reasoner.config.trainer.num_threads)
    sampled = reasoner.config.sampling.num_samples > 1
    print(
        f"low_difficulty: {reasoner.label} on {len(benchmarks)} benchmarks, "
        f"{f'the first {limit}' if limit else 'all'} questions each -> {shown(stem)}.md",
        flush=True,
    )
    rows, statuses, label = [], [], None
    for number, benchmark in enumerate(benchmarks, start=1):
        head = f"[{number}/{len(benchmarks)}] {benchmark.name}"
        if benchmark not in present:
            print(f"{head}: skipped: {benchmark.path} not found", flush=True)
            rows.append(skipped_row(benchmark))
            statuses.append("skipped: not found")
            continue
        size = sizes[benchmark.key]
        print(f"{head}: evaluating {min(size, limit or size)} of {size} questions of {benchmark.path} ...", flush=True)
        begun = time.time()
        result = reasoner.score(configs[benchmark.key], evals / benchmark.key, command, overwrite)
        summary = result.rows[0]
        label = label or summary["method"]
        row = evaluated_row(benchmark, summary, _scores(evals / benchmark.key, sampled), sampled, reasoner.config.seed)
        rows.append(row)
        statuses.append("evaluated")
        print(
            f"{head}: accuracy {row['accuracy']:.3f} (95% {row['ci95_low']:.3f}-{row['ci95_high']:.3f}) on "
            f"{row['questions']} questions, {row['latent_tokens_mean']:.1f} latent + {row['language_tokens_mean']:.1f} "
            f"language tokens, {time.time() - begun:.0f}s",
            flush=True,
        )
    label = label or reasoner.label
    title = f"{label}: low-difficulty math, {f'first {limit} questions each' if limit else 'all questions'}"
    plot = None
    if any(row["accuracy"] is not None for row in rows):  # a bar needs a number; all skipped: no plot
        plot = PlotSpec(kind="bar", metrics=("accuracy",), label_column="benchmark", ylabel="accuracy")
    files = write_table(rows, stem, title, columns=COLUMNS, plot=plot, command=command)
    # write_table has no notes: they are appended to its Markdown (each write atomic)
    explained = notes(reasoner.config, rows, benchmarks, shown(benchmarks_path))
    write_text(files.markdown, files.markdown.read_text(encoding="utf-8") + explained)
    if plot is None:
        outputs[2].unlink(missing_ok=True)  # an overwritten table's old plot would show numbers it no longer has
    settings = {
        "command": command,
        "name": name,
        "reasoner": reasoner.origin,
        "label": label,
        "task": reasoner.config.task,
        "method": reasoner.config.reasoning.method,
        "seed": reasoner.config.seed,
        "limit": limit,
        "accuracy": "sampled pass@1" if sampled else "greedy pass@1",
        "interval": f"bootstrap ({BOOTSTRAP_RESAMPLES} resamples)" if sampled else "wilson",
        "answer_extraction": reasoner.config.eval.answer_extraction,
        "sampling": dataclasses.asdict(reasoner.config.sampling),
        "eval_batch_size": reasoner.config.eval.batch_size,
        "overrides": reasoner.overrides,
        "benchmarks_file": shown(benchmarks_path),
        "benchmarks": [dataclasses.asdict(b) | {"status": s} for b, s in zip(benchmarks, statuses)],
        "evals_dir": shown(evals),
        "git_commit": git_commit(REPO),
        "wall_time_s": round(time.time() - started, 1),
        "rows": rows,
    }
    write_json(outputs[-1], settings)
    print(f"written {shown(files.markdown)}, .csv{', .png' if plot else ''}, .settings.json", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", help="a finished latent_cot or latent_rl run directory")
    which.add_argument("--config", help="an experiment YAML whose reasoner is evaluated untrained")
    parser.add_argument(
        "--limit", type=int, default=None, help="the first N questions of each benchmark (default: all)"
    )
    parser.add_argument("--name", default=None, help="results name (default: the config's name; -<run> for a run)")
    parser.add_argument("--benchmarks", default=BENCHMARKS, help="the benchmark list YAML")
    parser.add_argument("--results-dir", default="results/low_difficulty")
    parser.add_argument("--evals-dir", default="checkpoints/low_difficulty_evals", help="predictions per benchmark")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE overrides of the reasoner's config")
    parser.add_argument("--overwrite", action="store_true", help="replace existing results")
    args = parser.parse_args(argv)
    try:
        overrides = merge_pairs(args.set, "--set")
        reasoner = (
            from_checkpoint(args.checkpoint, overrides) if args.checkpoint else from_config(args.config, overrides)
        )
        low_difficulty(
            reasoner,
            args.benchmarks,
            args.limit,
            args.name,
            args.results_dir,
            args.evals_dir,
            args.overwrite,
            shlex.join(["python", "experiments/low_difficulty.py", *argv]),
        )
    except LatentLabError as err:
        print(f"low_difficulty: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
