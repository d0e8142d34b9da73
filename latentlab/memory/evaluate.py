"""Evaluate latent memory against raw-text baselines with the same frozen generator: one table row per method.

Writes per-question predictions (question, gold, answer, hit ids and scores, EM and F1: no evidence text), a summary
(JSON) and a table (Markdown, CSV, PNG) with 95% bootstrap intervals of EM and F1 into a results folder that is
written as a whole (``latentlab.io.staged_dir``); beside it a ``differences`` table (each method against no_retrieval
and bm25, paired bootstrap), when the questions carry a type a ``by_type`` table, and when the evidence holds images
a ``token_costs`` table (``token_costs``: an item as one latent, as raw text, as a VLM's patch tokens, per modality).
Retrieval runs over each question's own pool (the paper's protocol) or one global memory of the corpus.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import get_args

import numpy as np
import torch
from tqdm.auto import tqdm

from latentlab.configs import MemoryExperimentConfig, config_root
from latentlab.configs.memory import MemoryMethod
from latentlab.data.modules import corpus_of, load_qa_split
from latentlab.data.schema import Evidence, QAExample, merge_evidence
from latentlab.errors import ConfigError, DataError
from latentlab.eval.metrics import QAMetrics, exact_match, hotpotqa_f1, normalize_answer, token_f1
from latentlab.eval.report import PlotSpec, format_markdown_table, write_table
from latentlab.eval.uncertainty import difference_rows, group_rows, interval_columns
from latentlab.eval.webqa import CATEGORIES as WEBQA_CATEGORIES
from latentlab.eval.webqa import WebQAAccuracy, webqa_accuracy
from latentlab.io import refuse_existing, staged_dir, write_json, write_jsonl
from latentlab.memory.checkpoint import load_model
from latentlab.memory.model import LatentMemoryModel
from latentlab.memory.pipeline import Answer, Hit, LatentMemory, answer_to_record, answer_with_text, build_memory
from latentlab.memory.token_costs import token_costs, token_costs_title
from latentlab.memory.vision import title_text
from latentlab.optim import derive_seed
from latentlab.registry import Registry

TABLE_COLUMNS = (
    "method",
    "exact_match",
    "exact_match_low",
    "exact_match_high",
    "f1",
    "f1_low",
    "f1_high",
    "rouge_l",
    "recall@k",
    "precision@k",
    "context_tokens",
    "prompt_tokens_no_system",
    "prompt_tokens",
    "truncated_items",
    "seconds",
)
"""Columns of a latent-memory table, in order (`f1*` become `hotpotqa_f1*` under ``eval.f1: hotpotqa`` and
`webqa_accuracy*` under `webqa`); `_low` and `_high` bound the 95% percentile bootstrap interval of the mean over
questions."""

BASELINES = ("no_retrieval", "bm25")
"""The rows every other method is compared with in the ``differences`` table (those that were run)."""
CONTROLS = {"latent_shuffled": ("latent", "latent_compact"), "latent_no_images": ("latent",)}
"""Controls and the methods each one is compared with, after the baselines (when both ran): a latent method minus
the same reader on another question's latents is what the latents themselves add."""


def differences_table(scores: dict, metrics: list[str], seed: int, n_resamples: int) -> list[dict]:
    """The ``differences`` rows: every method against each of ``BASELINES``, then each ``CONTROLS`` pair."""
    rows = difference_rows(scores, BASELINES, metrics, seed, n_resamples)
    for control, compared in CONTROLS.items():
        if control in scores:
            subset = {m: scores[m] for m in (*compared, control) if m in scores}
            rows += difference_rows(subset, [control], metrics, seed, n_resamples)
    return rows


BOOTSTRAP_STREAM = 104_729
"""Multiplier of the bootstrap's random stream (``derive_seed(config.seed, BOOTSTRAP_STREAM)``): every interval of
one evaluation resamples the same questions, so rows are compared on the same draws."""

YES_NO_GROUP = "yes/no answers"
"""The ``by_type`` group of questions whose gold answer is yes or no (HotpotQA F1 scores them all-or-nothing)."""


def table_plot(metric: str = "f1") -> PlotSpec:
    """A memory table's plot: ``metric`` (an F1) of each method against the context tokens the generator read."""
    return PlotSpec(kind="scatter", metrics=(metric,), label_column="method", x="context_tokens")


F1_NAMES = {
    "squad": "SQuAD token F1 (SQuAD 2.0 empty-answer rule)",
    "hotpotqa": "official HotpotQA answer F1",
    "webqa": "WebQA accuracy by question category (latentlab.eval.webqa: keywords approximated, no fluency)",
}
F1_COLUMNS = {"squad": "f1", "hotpotqa": "hotpotqa_f1", "webqa": "webqa_accuracy"}
"""The headline score column of each ``eval.f1`` rule (and the per-question score of that name)."""


def table_metric(column: str, f1_rule: str) -> str:
    """A table column under the F1 rule: ``f1``, ``f1_low``, ``f1_high`` name the rule's score (``F1_COLUMNS``)."""
    is_f1 = column == "f1" or column.startswith("f1_")
    return F1_COLUMNS[f1_rule] + column.removeprefix("f1") if is_f1 else column


@dataclass
class EvalResult:
    out_dir: Path
    rows: list[dict]
    columns: tuple[str, ...] = ()
    differences: list[dict] = field(default_factory=list)
    """Paired bootstrap differences of each method to the baselines that ran (the ``differences`` table)."""
    by_type: list[dict] = field(default_factory=list)
    """Per question type rows (the ``by_type`` table); empty when the questions carry no type."""
    token_costs: list[dict] = field(default_factory=list)
    """Per modality token accounting (the ``token_costs`` table, ``ModalityCost`` fields); empty without images."""

    def table(self) -> str:
        return format_markdown_table(self.rows, list(self.columns) or None)


@dataclass
class EvalContext:
    """What every method of one evaluation shares: the model, the questions, the corpus, the settings."""

    config: MemoryExperimentConfig
    model: LatentMemoryModel
    examples: list[QAExample]
    corpus: list[Evidence]
    by_id: dict[str, Evidence]
    out_dir: Path
    retrieval: str
    latent_cache: tuple | None = None
    """(memory, hits, latents) of the latent rows, which differ only in slot labels and whose latents they read."""
    extra: dict = field(default_factory=dict)

    @property
    def questions(self) -> list[str]:
        return [ex.question for ex in self.examples]


Method = Callable[[EvalContext], list[Answer]]
METHODS: Registry[Method] = Registry("evaluation method")


def _register(name: str) -> Callable[[Method], Method]:
    if name not in get_args(MemoryMethod):
        raise ValueError(f"method {name!r} is not listed in configs.memory.MemoryMethod")
    return METHODS.register(name)


def _retrieve_latents(ctx: EvalContext, examples: list[QAExample], corpus: list[Evidence], memory_dir: Path) -> tuple:
    """(memory, hits, latents) of ``examples``: from a memory of ``corpus`` built in ``memory_dir`` (global
    retrieval), or from each question's own pool."""
    ev = ctx.config.eval
    if ctx.retrieval == "global":
        index = build_memory(ctx.model, corpus, memory_dir)
        memory = LatentMemory(ctx.model, index, batch_size=ev.batch_size)
        hits = memory.search([ex.question for ex in examples], ev.k)
        latents = [torch.from_numpy(index.latents_for([h.id for h in row])) for row in hits]
    else:
        memory = LatentMemory(ctx.model, None, batch_size=ev.batch_size)
        hits, latents = _pool_latent_hits(memory, examples, ev.k)
    return memory, hits, latents


def _latent_retrieval(ctx: EvalContext) -> tuple:
    if ctx.latent_cache is None:
        ctx.latent_cache = _retrieve_latents(ctx, ctx.examples, ctx.corpus, ctx.out_dir / "memory")
    return ctx.latent_cache


@_register("latent")
def _latent(ctx: EvalContext) -> list[Answer]:
    """Latents in `generator.slot_format`."""
    memory, hits, latents = _latent_retrieval(ctx)
    return memory.answer_from_latents(ctx.questions, latents, hits, ctx.config.generator.slot_format)


@_register("latent_compact")
def _latent_compact(ctx: EvalContext) -> list[Answer]:
    """The same latents, one header then back to back."""
    memory, hits, latents = _latent_retrieval(ctx)
    return memory.answer_from_latents(ctx.questions, latents, hits, "compact")


@_register("latent_shuffled")
def _latent_shuffled(ctx: EvalContext) -> list[Answer]:
    """The control: compact slots, each question reading the next question's latents."""
    memory, hits, latents = _latent_retrieval(ctx)
    hits, latents = hits[1:] + hits[:1], latents[1:] + latents[:1]
    return memory.answer_from_latents(ctx.questions, latents, hits, "compact")


def without_images(item: Evidence) -> Evidence | None:
    """An image item as the text a memory without images holds of it (its title; None for an untitled image, which
    such a memory cannot hold); a text item as it is."""
    if not item.image:
        return item
    return Evidence(item.id, title_text(item), where=item.where) if item.title else None


@_register("latent_no_images")
def _latent_no_images(ctx: EvalContext) -> list[Answer]:
    """The control of image evidence: the same reader on a memory of the same corpus in which every image is its
    title alone (a text item), so what it adds over this row is what the latents hold of the pictures."""
    corpus = [e for e in map(without_images, ctx.corpus) if e is not None]
    examples = ctx.examples
    if ctx.retrieval == "pool":
        examples = []
        for ex in ctx.examples:
            kept = [e for e in map(without_images, ex.evidence) if e is not None]
            if not kept:
                raise DataError(
                    f"question '{ex.id}': every item of its pool is an untitled image; a memory without "
                    "images holds nothing of it (latent_no_images needs titles or text items)"
                )
            examples.append(replace(ex, evidence=kept))
    memory, hits, latents = _retrieve_latents(ctx, examples, corpus, ctx.out_dir / "memory_no_images")
    return memory.answer_from_latents(ctx.questions, latents, hits, ctx.config.generator.slot_format)


def majority_answers(train: list[QAExample]) -> dict[str | None, str]:
    """The most frequent first gold answer of the training questions per question type (key None: over all of
    them), compared normalised and reported as first written; ties go to the answer first in sorted order."""
    if not train:
        raise DataError("the majority answer needs training questions, and the training split has none")
    counts: dict[str | None, dict[str, int]] = {}
    written: dict[str, str] = {}
    for ex in train:
        answer = normalize_answer(ex.answers[0])
        written.setdefault(answer, ex.answers[0])
        for key in (None, ex.question_type):
            bucket = counts.setdefault(key, {})
            bucket[answer] = bucket.get(answer, 0) + 1
    return {key: written[min(bucket, key=lambda a: (-bucket[a], a))] for key, bucket in counts.items()}


@_register("majority")
def _majority(ctx: EvalContext) -> list[Answer]:
    """The majority class: each question answered with the training split's most frequent answer of its type (of
    all training questions when its type is not among theirs). No model, no context."""
    majority = majority_answers(load_qa_split(ctx.config, "train", training_limits=False))
    return [Answer(ex.question, majority.get(ex.question_type, majority[None])) for ex in ctx.examples]


def _text_rows(ctx: EvalContext, hits: list[list[Hit]]) -> list[Answer]:
    return answer_with_text(ctx.model, ctx.questions, hits, batch_size=ctx.config.eval.batch_size)


@_register("no_retrieval")
def _no_retrieval(ctx: EvalContext) -> list[Answer]:
    return _text_rows(ctx, [[] for _ in ctx.examples])


@_register("full_context")
def _full_context(ctx: EvalContext) -> list[Answer]:
    return _text_rows(ctx, [[Hit.of(e, 0.0) for e in ex.evidence] for ex in ctx.examples])


def _retriever_rows(ctx: EvalContext, name: str) -> list[Answer]:
    from latentlab.memory.retrievers import make_retriever

    retriever, k = make_retriever(name), ctx.config.eval.k
    if ctx.retrieval == "global":
        retriever.fit(ctx.corpus)
        retrieved = retriever.search(ctx.questions, k)
    else:
        retrieved = retriever.search_pools(ctx.questions, [ex.evidence for ex in ctx.examples], k)
    hits = [[Hit.of(ctx.by_id[h.id], h.score) for h in row] for row in retrieved]
    return _text_rows(ctx, hits)


@_register("bm25")
def _bm25(ctx: EvalContext) -> list[Answer]:
    return _retriever_rows(ctx, "bm25")


@_register("dense")
def _dense(ctx: EvalContext) -> list[Answer]:
    return _retriever_rows(ctx, "dense")


def _pool_latent_hits(memory: LatentMemory, examples: list[QAExample], k: int):
    """Rank each question's own evidence by its latent key; returns hits and the top-k latents per question."""
    model = memory.model
    items = list(merge_evidence(examples).values())
    position = {e.id: i for i, e in enumerate(items)}
    latents, keys = [], []
    with torch.no_grad():
        for start in tqdm(range(0, len(items), 32), desc="compress pools", leave=False, disable=None):
            z = model.compressor.encode_items(items[start : start + 32])
            latents.append(z)
            keys.append(model.compressor.keys(z))
    latents_all, keys_all = torch.cat(latents), torch.cat(keys)
    query_keys = memory.query_keys([ex.question for ex in examples])
    width = max(len(ex.evidence) for ex in examples)
    pool = torch.full((len(examples), width), -1, dtype=torch.long)
    for b, ex in enumerate(examples):
        pool[b, : len(ex.evidence)] = torch.tensor([position[e.id] for e in ex.evidence])
    scores = torch.einsum("bd,bpd->bp", query_keys, keys_all[pool.clamp_min(0)])  # [B, P]
    scores = scores.masked_fill(pool < 0, float("-inf"))
    # Ties in pool order (score, then position): a stable sort on the negated scores.
    order = torch.sort(-scores, dim=1, stable=True).indices[:, : min(k, width)]
    top_scores = scores.gather(1, order)
    hits, chosen = [], []
    for b in range(len(examples)):
        keep = torch.isfinite(top_scores[b])
        rows = pool[b, order[b][keep]]
        hits.append([Hit.of(items[i], s) for i, s in zip(rows.tolist(), top_scores[b][keep].tolist())])
        chosen.append(latents_all[rows])
    return hits, chosen


def evaluate(
    config: MemoryExperimentConfig,
    checkpoint: str | Path | None = None,
    out_dir: str | Path | None = None,
    methods: list[str] | None = None,
    retrieval: str | None = None,
    command: str | None = None,
    overwrite: bool | None = None,
) -> EvalResult:
    """Run each method on the configured split; returns the rows of the table (also written to disk).

    An existing results folder is refused unless ``overwrite`` (default: ``eval.overwrite``); the folder is
    written whole, so a failed run leaves the earlier results as they were. Every interval takes
    ``eval.bootstrap_resamples`` resamples, seeded from ``config.seed`` (the same seed gives the same intervals).
    """
    ev = config.eval
    methods = list(methods or ev.methods)
    for i, method in enumerate(methods):
        METHODS.get(method, where=f"{config.source_file}: key 'eval.methods[{i}]'")
    retrieval = retrieval or ev.retrieval
    overwrite = ev.overwrite if overwrite is None else overwrite
    root = config_root(config)
    target = refuse_existing(Path(out_dir) if out_dir else root / ev.output_dir / config.name, overwrite)
    examples = load_qa_split(config, ev.split, training_limits=False)
    examples = examples[: ev.limit] if ev.limit else examples
    if not examples:
        raise ConfigError(f"{config.source_file}: key 'eval.split': split {ev.split!r} has no questions")
    if ev.f1 == "webqa":
        check_webqa_categories(examples, f"{config.source_file}: key 'eval.f1'")
    checkpoint = checkpoint or ev.checkpoint
    if checkpoint is None and any(m.startswith("latent") for m in methods):
        raise ConfigError(f"{config.source_file}: key 'eval.checkpoint': the latent methods need a trained compressor")
    if checkpoint is not None:
        model = load_model(checkpoint if Path(checkpoint).is_absolute() else root / checkpoint, config)
    else:  # raw-text rows only: the bare generator, no trained weights needed
        model = LatentMemoryModel(config).eval()
    corpus = corpus_of(config, examples) if retrieval == "global" else []
    pooled = merge_evidence(examples)
    by_id = pooled | {e.id: e for e in corpus}
    memory_items = corpus if retrieval == "global" else list(pooled.values())
    costs = [asdict(c) for c in token_costs(model, memory_items)] if any(e.image for e in memory_items) else []
    columns = tuple(table_metric(c, ev.f1) for c in TABLE_COLUMNS)
    interval_metrics = ("exact_match", table_metric("f1", ev.f1))
    seed = derive_seed(config.seed, BOOTSTRAP_STREAM)
    bootstrap_resamples = ev.bootstrap_resamples
    rows, scores = [], {}
    with staged_dir(target, overwrite) as staging:
        ctx = EvalContext(config, model, examples, corpus, by_id, staging, retrieval)
        for method in methods:
            started = time.time()
            answers = METHODS.get(method)(ctx)
            rows.append(_score(method, examples, answers, ev.k, time.time() - started, ev.f1))
            scores[method] = question_scores(examples, answers, ev.f1)
            rows[-1].update(
                interval_columns({m: scores[method][m] for m in interval_metrics}, seed, bootstrap_resamples)
            )
            records = [
                {
                    "id": ex.id,
                    "gold": ex.answers,
                    "supporting": ex.supporting,
                    **answer_to_record(a, with_text=False),
                    **{metric: float(values[q]) for metric, values in scores[method].items()},
                }
                for q, (ex, a) in enumerate(zip(examples, answers))
            ]
            write_jsonl(staging / f"predictions.{method}.jsonl", records)
        differences = differences_table(scores, interval_metrics, seed, bootstrap_resamples)
        groups = question_groups(examples)
        by_type = group_rows(scores, groups, interval_metrics, seed, bootstrap_resamples) if groups else []
        summary = {
            "config": config.source_file,
            "checkpoint": str(checkpoint) if checkpoint is not None else None,
            "split": ev.split,
            "k": ev.k,
            "retrieval": retrieval,
            "f1_rule": ev.f1,
            "bootstrap": {"interval": "percentile, 95%", "resamples": bootstrap_resamples, "seed": seed},
            "rows": rows,
            "differences": differences,
            "by_type": by_type,
            **({"token_costs": costs} if costs else {}),  # text-only evaluations: the summary they always had
        }
        write_json(staging / "summary.json", summary)
        # Recall and precision exist only where something was ranked (not for no_retrieval or full_context alone).
        columns = tuple(c for c in columns if any(c in row for row in rows))
        write_table(
            rows,
            staging / "table",
            title=(
                f"{config.name}: {ev.split} split, k={ev.k}, {retrieval} retrieval, {len(examples)} questions; "
                f"F1 = {F1_NAMES[ev.f1]}"
            ),
            columns=list(columns),
            plot=table_plot(table_metric("f1", ev.f1)),
            command=command,
        )
        setting = f"{ev.split} split, k={ev.k}, {retrieval} retrieval, {len(examples)} questions"
        interval = f"95% percentile bootstrap over questions, {bootstrap_resamples} resamples, seed {seed}"
        if differences:
            write_table(
                differences,
                staging / "differences",
                title=f"{config.name}: method - baseline, paired ({interval}); {setting}; F1 = {F1_NAMES[ev.f1]}",
                command=command,
            )
        if by_type:
            write_table(
                by_type,
                staging / "by_type",
                title=f"{config.name}: by question type ({interval}); {setting}; F1 = {F1_NAMES[ev.f1]}",
                command=command,
            )
        if costs:
            where = "the global corpus" if retrieval == "global" else "the questions' pools"
            patches = model.compressor.vision.num_patches if model.compressor.vision is not None else None
            title = token_costs_title(config.name, f"{where} ({len(memory_items)} items)", patches)
            write_table(costs, staging / "token_costs", title=title, command=command)
    return EvalResult(
        out_dir=target, rows=rows, columns=columns, differences=differences, by_type=by_type, token_costs=costs
    )


def check_webqa_categories(examples: list[QAExample], where: str) -> None:
    """``eval.f1: webqa`` scores each question by its WebQA category: one without a known ``question_type`` is a
    DataError naming the question (before any model is loaded)."""
    for ex in examples:
        if ex.question_type not in WEBQA_CATEGORIES:
            raise DataError(
                f"{where} is 'webqa', which scores each question by its WebQA category, but question '{ex.id}' has "
                f"question_type {ex.question_type!r} (expected one of {', '.join(WEBQA_CATEGORIES)}, as "
                "`latentlab data webqa` writes them)"
            )


def question_scores(examples: list[QAExample], answers: list[Answer], f1_rule: str) -> dict[str, np.ndarray]:
    """Per-question scores [Q] of one method: ``exact_match``, ``f1`` (SQuAD) and the rule's own score:
    ``hotpotqa_f1`` under `hotpotqa`, ``webqa_accuracy`` (by ``question_type``) under `webqa`.

    The same functions as ``QAMetrics`` and ``WebQAAccuracy``, so each mean equals the table's number.
    """
    predictions = [a.answer for a in answers]
    scorers = {"exact_match": exact_match, "f1": token_f1}
    if f1_rule == "hotpotqa":
        scorers["hotpotqa_f1"] = hotpotqa_f1
    scores = {
        name: np.array([score(p, ex.answers) for p, ex in zip(predictions, examples)], dtype=np.float64)
        for name, score in scorers.items()
    }
    if f1_rule == "webqa":
        scores["webqa_accuracy"] = np.array(
            [webqa_accuracy(p, ex.answers, ex.question_type) for p, ex in zip(predictions, examples)],
            dtype=np.float64,
        )
    return scores


def question_groups(examples: list[QAExample]) -> dict[str, list[int]]:
    """Question indices by ``question_type`` (sorted; ``untyped`` for those without one), then the questions whose
    gold answer is yes or no. Empty when no question carries a type: there is nothing to break down."""
    if all(ex.question_type is None for ex in examples):
        return {}
    groups: dict[str, list[int]] = {}
    for q, ex in enumerate(examples):
        groups.setdefault(ex.question_type or "untyped", []).append(q)
    groups = dict(sorted(groups.items()))
    yes_no = [q for q, ex in enumerate(examples) if any(normalize_answer(g) in ("yes", "no") for g in ex.answers)]
    if yes_no:
        groups[YES_NO_GROUP] = yes_no
    return groups


def _score(method: str, examples: list[QAExample], answers: list[Answer], k: int, seconds: float, f1: str) -> dict:
    metrics = QAMetrics(ks=[k], hotpotqa_f1=f1 == "hotpotqa")
    retrieved = [[h.id for h in a.hits] for a in answers]
    has_retrieval = method not in ("no_retrieval", "full_context")  # nothing ranked: Recall@k would be meaningless
    metrics.update(
        [a.answer for a in answers],
        [ex.answers for ex in examples],
        retrieved_ids=retrieved if has_retrieval else None,
        supporting_ids=[ex.supporting for ex in examples] if has_retrieval else None,
        prompt_tokens=[a.prompt_tokens for a in answers],
        prompt_tokens_no_system=[a.no_system_tokens for a in answers],
        context_tokens=[a.context_tokens for a in answers],
    )
    values = metrics.compute()
    if f1 == "webqa":
        webqa = WebQAAccuracy()
        webqa.update(
            [a.answer for a in answers], [ex.answers for ex in examples], [ex.question_type for ex in examples]
        )
        values["webqa_accuracy"] = webqa.compute()["all"]
    row = {"method": method}
    for key, value in values.items():
        row[key.replace(f"@{k}", "@k")] = float(value)
    row["truncated_items"] = sum(a.truncated_items for a in answers)
    row["seconds"] = round(seconds, 1)
    return row
