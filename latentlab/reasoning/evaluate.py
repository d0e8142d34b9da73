"""Evaluate a trained latent_cot run: accuracy, pass@k and token counts on a held-out split; CVAE explanations.

Every method runs the same batched decoding path (``LatentCoTModule.generate_answers``) at its final stage:
all steps latent for coconut / atp_latent, plain text generation for cot / no_cot.

pass@k sampling (documented once, here): with ``sampling.num_samples`` n > 1 each question gets n sampled answers,
tokens drawn at ``sampling.temperature`` (Gumbel-max over the logits, the same for every method) and, for
the latent methods, optional Gaussian noise of ``sampling.thought_noise`` x RMS on every thought; pass@k is the
unbiased estimator 1 - C(n-c, k)/C(n, k) (``pass_at_k``, over the [questions, n] correctness), for every k of
``eval.pass_k``. With n = 1, pass@1 is the greedy accuracy.

The n samples of a batch (``eval.batch_size`` questions) are drawn in one batched generation (``sample_answers``):
each question is repeated n times, question-major, so row q * n + s is sample s of question q. Every random draw
(the Gumbel noise of each token, the thought noise, atp_latent's sampled z) is made per row, so the rows are
independent samples. One generator per batch, seeded ``derive_seed(seed, TRAIN_STREAM, batch_index)``, makes the
result repeat exactly. When n * batch_size rows are more than ``sample_rows`` (default: the larger of
``eval.batch_size`` and ``SAMPLE_ROWS_PER_CALL``), the rows are generated in consecutive chunks of that many, the
chunks drawing one after another from the batch's generator: the same settings give the same samples, but another
``sample_rows`` gives other (equally valid) draws.

For the latent methods the row also has ``shuffled_thought_accuracy``: greedy accuracy when each question of a batch
reads the next question's thoughts. Near ``accuracy`` it says the thoughts carry nothing about their own question.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from latentlab.configs import ExperimentConfig, SamplingConfig, config_root
from latentlab.configs.loader import read_resolved
from latentlab.configs.reasoning import ReasoningEvalConfig
from latentlab.data.schema import CoTExample
from latentlab.errors import ConfigError
from latentlab.eval.metrics import answers_match, pass_at_k
from latentlab.eval.report import PlotSpec, format_markdown_table, write_table
from latentlab.io import refuse_existing, staged_dir, write_json, write_jsonl
from latentlab.optim import TRAIN_STREAM, derive_seed
from latentlab.reasoning.curriculum import DEFAULT_FORMAT, n_latent_steps
from latentlab.reasoning.cvae import decode_steps
from latentlab.reasoning.data import latent_step_texts, load_cot_split
from latentlab.reasoning.module import GeneratedAnswers, LatentCoTModule

TABLE_COLUMNS = (
    "method",
    "accuracy",
    "pass@1",
    "reasoning_tokens_mean",
    "latent_tokens_mean",
    "language_tokens_mean",
    "generated_tokens_mean",
    "shuffled_thought_accuracy",
    "step_token_accuracy",
    "fit_s",
    "eval_s",
)
"""Columns of a reasoning table, in order (fit_s and eval_s come from reproduce.py)."""

SAMPLE_ROWS_PER_CALL = 256
"""Default cap on the rows (question x sample) of one sampling generation; ``eval.batch_size`` rows always fit."""


def table_plot(metric: str = "accuracy") -> PlotSpec:
    """A reasoning table's plot: ``metric`` of each method against its mean reasoning tokens."""
    return PlotSpec(kind="scatter", metrics=(metric,), label_column="method", x="reasoning_tokens_mean")


METHOD_LABELS = {
    "no_cot": "No-CoT",
    "cot": "CoT",
    "coconut": "Coconut",
    "atp_latent": "ATP-Latent",
    "latent_sft": "Latent-SFT",
}
TOKEN_COLUMNS = ["latent_tokens_mean", "language_tokens_mean", "reasoning_tokens_mean", "generated_tokens_mean"]


@dataclass
class CoTEvalResult:
    """What ``evaluate_cot`` wrote: one table row for the run, plus where the files are."""

    out_dir: Path
    rows: list[dict]
    summary: dict = field(default_factory=dict)

    def table(self) -> str:
        return format_markdown_table(self.rows)


@dataclass
class Explanation:
    """An atp_latent answer with each thought group decoded back to text by the CVAE decoder."""

    decoded_steps: list[str]
    answer: str
    n_thoughts: int
    text: str = ""
    """The full generated language text (the answer with its marker)."""


@dataclass
class StepAccuracy:
    """How well the CVAE decoder rebuilds the gold steps from the reasoner's own thoughts (greedy decoding)."""

    token_accuracy: float
    """Gold step tokens (and the EOS after them) matched position by position by the decoded text."""
    step_exact_match: float
    """Decoded steps equal to the gold step."""
    n_steps: int
    n_tokens: int


# ---------------------------------------------------------------------------------------------------------------------
# Loading a run


def _checkpoint_file(checkpoint: str | Path) -> Path:
    path = Path(checkpoint).expanduser()
    ckpt = path / "last.ckpt" if path.is_dir() else path
    if not ckpt.exists():
        raise ConfigError(f"checkpoint {checkpoint}: no {ckpt.name} found (expected a run directory or a .ckpt file)")
    return ckpt


def read_run(checkpoint: str | Path, task: str) -> tuple[Path, ExperimentConfig]:
    """(the .ckpt file, the run's resolved config) of a run directory or a .ckpt beside its config.yaml, which must
    be a run of ``task``; the config's init_from is cleared, since the checkpoint holds every weight."""
    ckpt = _checkpoint_file(checkpoint)
    config_path = ckpt.parent / "config.yaml"
    if not config_path.exists():
        raise ConfigError(f"checkpoint {ckpt}: no config.yaml beside it (expected the run directory `fit` wrote)")
    run_config = read_resolved(config_path)
    if run_config.task != task:
        raise ConfigError(f"{config_path}: key 'task' is {run_config.task!r}; this checkpoint is not a {task} run")
    run_config.reasoning.init_from = None
    return ckpt, run_config


def load_run(checkpoint: str | Path) -> LatentCoTModule:
    """A trained module from a run directory (config.yaml + last.ckpt) or a .ckpt beside its config.yaml."""
    ckpt, run_config = read_run(checkpoint, "latent_cot")
    module = LatentCoTModule(run_config)
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    module.on_load_checkpoint(state)
    module.load_state_dict(state["state_dict"])
    return module.eval()


def _as_module(checkpoint: str | Path | LatentCoTModule) -> LatentCoTModule:
    return checkpoint.eval() if isinstance(checkpoint, LatentCoTModule) else load_run(checkpoint)


def _batches(items: Sequence, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


# ---------------------------------------------------------------------------------------------------------------------
# Accuracy, pass@k, token counts


def evaluate_cot(
    config: ExperimentConfig,
    checkpoint: str | Path | LatentCoTModule | None = None,
    out_dir: str | Path | None = None,
    command: str | None = None,
    overwrite: bool | None = None,
    sample_rows: int | None = None,
    label: str | None = None,
) -> CoTEvalResult:
    """Evaluate a trained run on ``eval.split`` of ``config``'s reasoning data; writes predictions, summary, table.

    The model (method, reasoner, stage) comes from the checkpoint's run; the data and the evaluation settings
    (``eval.*`` with ``eval.pass_k``, and ``sampling.*``) from ``config``. Files: ``predictions.jsonl``, ``summary.json``, ``table.{md,csv,png}``.
    ``sample_rows``: the most rows of one sampling generation (default: the larger of ``eval.batch_size`` and
    ``SAMPLE_ROWS_PER_CALL``; see the module docstring). With sampling, each record also lists its samples'
    predictions and reasoning tokens (``sample_predictions``, ``sample_reasoning_tokens``: sample s at index s).
    ``label``: the table's method name (default: the run's method, e.g. "CoT"; latent_rl passes "CoT + GRPO (...)").
    """
    checkpoint = checkpoint if checkpoint is not None else config.eval.checkpoint
    if checkpoint is None:
        raise ConfigError(f"{config.source_file}: key 'eval.checkpoint': evaluate_cot needs a trained run directory")
    root = config_root(config)
    if not isinstance(checkpoint, LatentCoTModule) and not Path(checkpoint).is_absolute():
        checkpoint = root / checkpoint
    module = _as_module(checkpoint)
    run = module.config.reasoning
    ev = config.eval
    overwrite = ev.overwrite if overwrite is None else overwrite
    target = refuse_existing(Path(out_dir) if out_dir else root / ev.output_dir / config.name, overwrite)
    examples = load_cot_split(config, ev.split)
    examples = examples[: ev.limit] if ev.limit else examples
    if not examples:
        raise ConfigError(f"{config.source_file}: key 'eval.split': split {ev.split!r} has no examples")
    stage = run.final_stage
    started = time.time()
    records: list[dict] = []
    sampling = config.sampling
    n_samples = sampling.num_samples if sampling.num_samples > 1 else 0
    rows_per_call = sample_rows if sample_rows is not None else max(ev.batch_size, SAMPLE_ROWS_PER_CALL)
    if rows_per_call < 1:
        raise ConfigError(f"evaluate_cot: sample_rows must be >= 1, got {rows_per_call}")
    sample_correct: list[torch.Tensor] = []  # bool [B, n] per batch
    sample_tokens: list[tuple[torch.Tensor, torch.Tensor]] = []  # reasoning and generated tokens, [B, n] per batch
    for batch_index, batch in enumerate(_batches(examples, ev.batch_size)):
        questions = [ex.question for ex in batch]
        greedy = extracted(module.generate_answers(questions, stage, max_new_tokens=sampling.max_new_tokens), ev)
        shuffled = (
            extracted(
                module.generate_answers(
                    questions, stage, max_new_tokens=sampling.max_new_tokens, shuffle_thoughts=True
                ),
                ev,
            )
            if run.latent and len(batch) > 1
            else None
        )
        sampled = None
        if n_samples:  # all n samples of the batch in one generation (chunked past rows_per_call rows)
            generator = torch.Generator(device=module.device).manual_seed(
                derive_seed(config.seed, TRAIN_STREAM, batch_index)
            )
            sampled = extracted(
                sample_answers(module, questions, stage, sampling, n_samples, generator, rows_per_call), ev
            )
            sample_correct.append(score_samples(sampled, [ex.answer for ex in batch], n_samples))
            sample_tokens.append(sample_token_counts(sampled, n_samples))
        for b, ex in enumerate(batch):
            record = {
                "id": ex.id,
                "question": ex.question,
                "gold": ex.answer,
                "prediction": greedy.predictions[b],
                "text": greedy.texts[b],
                "correct": answers_match(greedy.predictions[b], ex.answer),
                "correct_with_shuffled_thoughts": (
                    answers_match(shuffled.predictions[b], ex.answer) if shuffled is not None else None
                ),
                "latent_tokens": greedy.n_latent[b],
                "language_tokens": greedy.n_language[b],
                "reasoning_language_tokens": greedy.n_reasoning_language[b],
                "samples": n_samples,
                "samples_correct": int(sample_correct[-1][b].sum()) if sampled is not None else 0,
            }
            if sampled is not None:  # sample s of this question is row b * n + s
                record["sample_predictions"] = sampled.predictions[b * n_samples : (b + 1) * n_samples]
                record["sample_reasoning_tokens"] = [int(t) for t in sample_tokens[-1][0][b].tolist()]
            records.append(record)
    seconds = time.time() - started
    label = label or METHOD_LABELS[run.method]
    row = _summary_row(
        label,
        records,
        ev.pass_k,
        torch.cat(sample_correct) if sample_correct else None,
        (torch.cat([r for r, _ in sample_tokens]), torch.cat([g for _, g in sample_tokens])) if sample_tokens else None,
    )
    row["seconds"] = round(seconds, 1)
    if run.latent:
        # the ablation: the same questions, each reading another question's thoughts (module.shuffled_thoughts)
        scored = [rec["correct_with_shuffled_thoughts"] for rec in records]
        scored = [float(c) for c in scored if c is not None]
        row["shuffled_thought_accuracy"] = sum(scored) / len(scored) if scored else None
    if module.cvae is not None:
        row["step_token_accuracy"] = step_token_accuracy(module, examples, ev.batch_size).token_accuracy
    summary = {
        "config": config.source_file,
        "checkpoint": str(checkpoint) if not isinstance(checkpoint, LatentCoTModule) else None,
        "method": run.method,
        "stage": stage,
        "split": ev.split,
        "questions": len(records),
        "pass_k": list(ev.pass_k),
        "num_samples": sampling.num_samples,
        "sample_temperature": sampling.temperature,
        "thought_noise": sampling.thought_noise,
        "rows": [row],
    }
    if n_samples:
        summary["sample_rows_per_call"] = rows_per_call
    with staged_dir(target, overwrite) as staging:  # the folder appears whole, or not at all
        write_jsonl(staging / "predictions.jsonl", records)
        write_json(staging / "summary.json", summary)
        write_table(
            [row],
            staging / "table",
            f"{config.name}: {label} on {ev.split}",
            plot=table_plot(),
            command=command,
        )
    return CoTEvalResult(out_dir=target, rows=[row], summary=summary)


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def last_number(text: str) -> str:
    """The last number in ``text`` ("1,000" and "-2.5" included), or "" when it has none."""
    found = _NUMBER.findall(text)
    return found[-1].rstrip(".,") if found else ""


def extracted(answers: GeneratedAnswers, ev: ReasoningEvalConfig) -> GeneratedAnswers:
    """``answers`` with ``eval.answer_extraction`` applied: ``last_number`` takes the last number of a text that has
    no answer marker (``marker``, the default, keeps ``extract_answer``'s predictions)."""
    if ev.answer_extraction == "marker":
        return answers
    marker = DEFAULT_FORMAT.answer_prefix.strip()
    predictions = [p if marker in t else last_number(t) for p, t in zip(answers.predictions, answers.texts)]
    return dataclasses.replace(answers, predictions=predictions)


def sample_answers(
    module: LatentCoTModule,
    questions: Sequence[str],
    stage: int,
    sampling: SamplingConfig,
    n_samples: int,
    generator: torch.Generator | None,
    max_rows: int | None = None,
) -> GeneratedAnswers:
    """``n_samples`` sampled answers to each question in one batched generation, question-major: row q * n + s.

    Tokens at ``sampling.temperature`` (filtered by ``sampling.top_k`` / ``top_p``), thoughts with
    ``sampling.thought_noise``, every draw made per row from
    ``generator``. More than ``max_rows`` rows are generated in consecutive chunks of ``max_rows`` rows (drawing
    from the same generator in turn). ``latents`` is kept only when every chunk has the same thought shape.
    """
    rows = [q for q in questions for _ in range(n_samples)]
    size = max_rows if max_rows else max(len(rows), 1)
    parts = [
        module.generate_answers(
            rows[start : start + size],
            stage,
            sampling.temperature,
            sampling.thought_noise,
            generator,
            sampling.max_new_tokens,
            top_k=sampling.top_k,
            top_p=sampling.top_p,
        )
        for start in range(0, len(rows), size)
    ]
    if len(parts) == 1:
        return parts[0]
    latents = [p.latents for p in parts]
    same_shape = all(z is not None and z.shape[1:] == latents[0].shape[1:] for z in latents)
    return GeneratedAnswers(
        texts=[t for p in parts for t in p.texts],
        predictions=[t for p in parts for t in p.predictions],
        n_latent=[t for p in parts for t in p.n_latent],
        n_language=[t for p in parts for t in p.n_language],
        n_reasoning_language=[t for p in parts for t in p.n_reasoning_language],
        latents=torch.cat(latents) if same_shape else None,
    )


def score_samples(answers: GeneratedAnswers, golds: Sequence[str], n_samples: int) -> torch.Tensor:
    """Correctness of question-major samples (``sample_answers``) as a bool [B, n]: [q, s] is row q * n + s."""
    if len(answers.predictions) != len(golds) * n_samples:
        raise ValueError(f"{len(answers.predictions)} sampled rows for {len(golds)} questions x {n_samples} samples")
    hits = [answers_match(pred, golds[row // n_samples]) for row, pred in enumerate(answers.predictions)]
    return torch.tensor(hits, dtype=torch.bool).view(len(golds), n_samples)


def sample_token_counts(answers: GeneratedAnswers, n_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Reasoning tokens (thoughts + language before the answer marker) and generated tokens (thoughts + language)
    of question-major samples, each a float64 [B, n]."""
    latent = torch.tensor(answers.n_latent, dtype=torch.float64)
    reasoning = latent + torch.tensor(answers.n_reasoning_language, dtype=torch.float64)
    generated = latent + torch.tensor(answers.n_language, dtype=torch.float64)
    return reasoning.view(-1, n_samples), generated.view(-1, n_samples)


def _summary_row(
    label: str,
    records: list[dict],
    ks: Sequence[int],
    sample_correct: torch.Tensor | None = None,
    sample_tokens: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict:
    """Accuracy, pass@k and mean token counts per answer over the prediction records.

    ``sample_correct``: bool [questions, n] correctness of the samples (None: greedy only, pass@1 is the accuracy),
    scored with the vectorised ``pass_at_k``; ``sample_tokens``: the samples' reasoning and generated token counts
    ([questions, n] each), averaged over every sample.
    """
    n = len(records)
    correct = torch.tensor([float(rec["correct"]) for rec in records])
    row: dict = {"method": label, "accuracy": float(correct.mean())}
    for k in ks:
        if sample_correct is not None:
            drawn = torch.full((sample_correct.shape[0],), sample_correct.shape[1])
            row[f"pass@{k}"] = float(pass_at_k(drawn, sample_correct.sum(dim=1), k).mean())
        else:  # one greedy answer per question: pass@1 is the accuracy
            row[f"pass@{k}"] = float(pass_at_k(torch.ones(n), correct, k).mean())
    latent = sum(rec["latent_tokens"] for rec in records) / n
    language = sum(rec["language_tokens"] for rec in records) / n
    reasoning_language = sum(rec["reasoning_language_tokens"] for rec in records) / n
    row.update(
        {
            "latent_tokens_mean": latent,
            "language_tokens_mean": language,
            "reasoning_tokens_mean": latent + reasoning_language,
            "generated_tokens_mean": latent + language,
            "questions": n,
        }
    )
    if sample_correct is not None:  # over all questions x samples (pass@1 is the same number)
        row["sample_accuracy"] = float(sample_correct.double().mean())
    if sample_tokens is not None:
        row["sample_reasoning_tokens_mean"] = float(sample_tokens[0].mean())
        row["sample_generated_tokens_mean"] = float(sample_tokens[1].mean())
    return row


# ---------------------------------------------------------------------------------------------------------------------
# ATP-Latent: decoding thoughts back to text


def _require_cvae(module: LatentCoTModule) -> None:
    if module.cvae is None:
        raise ConfigError(
            f"this run's reasoning.method is {module.config.reasoning.method!r}; decoding thoughts needs an "
            "atp_latent run (its CVAE decoder)"
        )


def _groups_used(n_thoughts: int, module: LatentCoTModule) -> int:
    """Thought groups (steps) a row fed: ceil(n_thoughts / c)."""
    return -(-n_thoughts // module.config.reasoning.curriculum.thoughts_per_step)


def explain(checkpoint: str | Path | LatentCoTModule, question: str, max_step_tokens: int = 48) -> Explanation:
    """Answer ``question`` with an atp_latent run and decode each thought group into the step it stands for."""
    module = _as_module(checkpoint)
    _require_cvae(module)
    answers = module.generate_answers([question], module.config.reasoning.final_stage)
    steps: list[str] = []
    if answers.latents is not None:
        steps = decode_steps(
            module.cvae.decoder, answers.latents, module.vocab.eos_id, max_step_tokens, module.tokenizer
        )[0]
        steps = steps[: _groups_used(answers.n_latent[0], module)]  # a stop head may end the thoughts early
    return Explanation(
        decoded_steps=steps, answer=answers.predictions[0], n_thoughts=answers.n_latent[0], text=answers.texts[0]
    )


def step_token_accuracy(
    checkpoint: str | Path | LatentCoTModule,
    examples: Sequence[CoTExample],
    batch_size: int = 64,
    max_step_tokens: int = 48,
) -> StepAccuracy:
    """Decode the thoughts the reasoner produces for held-out questions and compare with their gold steps.

    Thought group g is compared with the text it was trained to rebuild (``latent_step_texts``: step g, the last
    group also every later step); groups past the example's steps are not scored.
    """
    module = _as_module(checkpoint)
    _require_cvae(module)
    r, eos = module.config.reasoning, module.vocab.eos_id
    stage = r.final_stage
    matched = total = exact = n_steps = 0
    for batch in _batches(list(examples), batch_size):
        answers = module.generate_answers([ex.question for ex in batch], stage)
        if answers.latents is None:
            continue
        n_groups = answers.latents.shape[1]
        decoded = decode_steps(module.cvae.decoder, answers.latents, eos, max_step_tokens)
        for ex, row, used in zip(batch, decoded, answers.n_latent):
            kept = _groups_used(used, module)
            row = row[:kept] + [[] for _ in row[kept:]]  # groups after a stop were never fed: nothing decoded
            gold_texts = latent_step_texts(ex.steps, n_latent_steps(len(ex.steps), stage, r.curriculum), n_groups)
            for gold_text, got in zip(gold_texts, row):
                if not gold_text:
                    continue
                gold = module.vocab.encode(gold_text) + [eos]
                got = list(got) + [eos]
                matched += sum(int(j < len(got) and got[j] == token) for j, token in enumerate(gold))
                total += len(gold)
                exact += int(got == gold)
                n_steps += 1
    return StepAccuracy(
        token_accuracy=matched / max(total, 1),
        step_exact_match=exact / max(n_steps, 1),
        n_steps=n_steps,
        n_tokens=total,
    )
