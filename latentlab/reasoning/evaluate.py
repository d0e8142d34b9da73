"""Evaluate a trained latent_cot run: accuracy, pass@k and token counts on a held-out split; CVAE explanations.

Every method runs the same batched decoding path (``LatentCoTModule.generate_answers``) at its final stage:
all steps latent for coconut / atp_latent, plain text generation for cot / no_cot.

pass@k sampling (documented once, here): with ``sampling.num_samples`` n > 1 each question gets n sampled answers,
tokens drawn at ``sampling.temperature`` (Gumbel-max over the logits, the same for every method) and, for
the latent methods, optional Gaussian noise of ``sampling.thought_noise`` x RMS on every thought; pass@k is the
unbiased estimator 1 - C(n-c, k)/C(n, k). With n = 1, pass@1 is the greedy accuracy.

For the latent methods the row also has ``shuffled_thought_accuracy``: greedy accuracy when each question of a batch
reads the next question's thoughts. Near ``accuracy`` it says the thoughts carry nothing about their own question.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from latentlab.configs import ExperimentConfig, config_from_dict, config_root
from latentlab.data.schema import CoTExample
from latentlab.errors import ConfigError
from latentlab.eval.metrics import answers_match, pass_at_k
from latentlab.eval.report import PlotSpec, format_markdown_table, write_table
from latentlab.io import refuse_existing, staged_dir, write_json, write_jsonl
from latentlab.optim import TRAIN_STREAM, derive_seed
from latentlab.reasoning.curriculum import n_latent_steps
from latentlab.reasoning.cvae import decode_steps
from latentlab.reasoning.data import latent_step_texts, load_cot_split
from latentlab.reasoning.module import LatentCoTModule

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

METHOD_LABELS = {"no_cot": "No-CoT", "cot": "CoT", "coconut": "Coconut", "atp_latent": "ATP-Latent"}
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


def load_run(checkpoint: str | Path) -> LatentCoTModule:
    """A trained module from a run directory (config.yaml + last.ckpt) or a .ckpt beside its config.yaml."""
    ckpt = _checkpoint_file(checkpoint)
    config_path = ckpt.parent / "config.yaml"
    if not config_path.exists():
        raise ConfigError(f"checkpoint {ckpt}: no config.yaml beside it (expected the run directory `fit` wrote)")
    run_config = config_from_dict(yaml.safe_load(config_path.read_text(encoding="utf-8")), source=str(config_path))
    if run_config.task != "latent_cot":
        raise ConfigError(f"{config_path}: key 'task' is {run_config.task!r}; this checkpoint is not a latent_cot run")
    run_config.reasoning.init_from = None  # the checkpoint holds every weight
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
) -> CoTEvalResult:
    """Evaluate a trained run on ``eval.split`` of ``config``'s reasoning data; writes predictions, summary, table.

    The model (method, reasoner, stage) comes from the checkpoint's run; the data and the evaluation settings
    (``eval.*`` with ``eval.pass_k``, and ``sampling.*``) from ``config``. Files: ``predictions.jsonl``, ``summary.json``, ``table.{md,csv,png}``.
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
    for batch_index, batch in enumerate(_batches(examples, ev.batch_size)):
        questions = [ex.question for ex in batch]
        greedy = module.generate_answers(questions, stage, max_new_tokens=sampling.max_new_tokens)
        shuffled = (
            module.generate_answers(questions, stage, max_new_tokens=sampling.max_new_tokens, shuffle_thoughts=True)
            if run.latent and len(batch) > 1
            else None
        )
        sampled_correct = [0] * len(batch)
        for sample in range(n_samples):
            generator = torch.Generator(device=module.device).manual_seed(
                derive_seed(config.seed, TRAIN_STREAM, batch_index * 1009 + sample)
            )
            answers = module.generate_answers(
                questions, stage, sampling.temperature, sampling.thought_noise, generator, sampling.max_new_tokens
            )
            for b, (pred, ex) in enumerate(zip(answers.predictions, batch)):
                sampled_correct[b] += int(answers_match(pred, ex.answer))
        for b, ex in enumerate(batch):
            records.append(
                {
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
                    "samples_correct": sampled_correct[b],
                }
            )
    seconds = time.time() - started
    row = _summary_row(METHOD_LABELS[run.method], records, ev.pass_k, n_samples)
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
    with staged_dir(target, overwrite) as staging:  # the folder appears whole, or not at all
        write_jsonl(staging / "predictions.jsonl", records)
        write_json(staging / "summary.json", summary)
        write_table(
            [row],
            staging / "table",
            f"{config.name}: {METHOD_LABELS[run.method]} on {ev.split}",
            plot=PlotSpec(kind="scatter", metrics=("accuracy",), label_column="method", x="reasoning_tokens_mean"),
            command=command,
        )
    return CoTEvalResult(out_dir=target, rows=[row], summary=summary)


def _summary_row(label: str, records: list[dict], ks: Sequence[int], n_samples: int) -> dict:
    """Accuracy, pass@k and mean token counts per answer over the prediction records."""
    n = len(records)
    correct = torch.tensor([float(rec["correct"]) for rec in records])
    row: dict = {"method": label, "accuracy": float(correct.mean())}
    for k in ks:
        if n_samples:
            samples = torch.tensor([rec["samples"] for rec in records])
            hits = torch.tensor([rec["samples_correct"] for rec in records])
            row[f"pass@{k}"] = float(pass_at_k(samples, hits, k).mean())
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
