"""Coconut continuous thoughts for any Hugging Face causal LM: the last hidden state is fed back as the next input.

Training forward and greedy generation share one KV-cached stepper, with position ids derived from the attention mask.

A batch is ``[question] <bot> <thought>*n <eot> [language]``: the part before the thoughts (the *prefix*) is left-padded
so that its last column (``<bot>``) lines up for every row, the thought slots then share columns, and the part after
(the *suffix*: ``<eot>`` and the language tokens) is right-padded. Every row has the same number n of thought slots
(Coconut's ``pad_latent_to_max`` within a batch); a row with fewer thoughts either runs extra thoughts
(``mask_unused_thoughts=False``, Coconut's behaviour) or has the unused slots masked out of attention and position ids,
which makes its result independent of the rest of the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import DynamicCache

from latentlab.errors import ConfigError
from latentlab.reasoning.curriculum import (
    DEFAULT_FORMAT,
    IGNORE_INDEX,
    CoTLayout,
    CoTTextFormat,
    LayoutVocab,
    question_prompt_ids,
)

BOT_TOKEN = "<bot>"
THOUGHT_TOKEN = "<thought>"
EOT_TOKEN = "<eot>"

ThoughtFn = Callable[[int, Tensor], Tensor]
"""``thought_fn(step_index, hidden [B, H]) -> [B, H]``: what is fed at thought slot ``step_index`` given the last
hidden state before it (identity = Coconut; noise for RL exploration; a CVAE latent mapped back to H)."""

StopFn = Callable[[int], Tensor]
"""``stop_fn(step_index) -> bool [B]``: rows whose thoughts end at this slot (called after ``thought_fn`` there)."""


@dataclass(frozen=True)
class ThoughtTokens:
    """Ids of the three special tokens of continuous-thought sequences."""

    bot_id: int
    thought_id: int
    eot_id: int


def _causal_lm(model: nn.Module) -> nn.Module:
    """The causal LM inside a PEFT wrapper (LoRA layers are injected in place, so they stay active)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def add_thought_tokens(tokenizer, model: nn.Module, init_from_text: str | None = None) -> ThoughtTokens:
    """Add ``<bot>``, ``<thought>``, ``<eot>`` as special tokens and grow the embeddings; calling it again is a no-op.

    New rows get Hugging Face's mean resizing; ``init_from_text`` (Coconut uses ``"<<"``) instead copies the mean
    embedding (and LM-head row) of that text's tokens, which Coconut reports stabilises training.
    """
    names = [BOT_TOKEN, THOUGHT_TOKEN, EOT_TOKEN]
    missing = [name for name in names if name not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)  # stable across transformers 4.x/5.x
    ids = [tokenizer.convert_tokens_to_ids(name) for name in names]
    lm = _causal_lm(model)
    if lm.get_input_embeddings().num_embeddings < len(tokenizer):
        lm.resize_token_embeddings(len(tokenizer))
    if missing and init_from_text is not None:  # only fresh rows: a second call must not touch trained ones
        source = tokenizer(init_from_text, add_special_tokens=False)["input_ids"]
        if not source:
            raise ConfigError(f"init_from_text {init_from_text!r} encodes to no tokens")
        new_ids = [tokenizer.convert_tokens_to_ids(name) for name in missing]
        with torch.no_grad():
            # a set: GPT-2 ties the LM head to the input embeddings, so the matrix is written once
            for matrix in {lm.get_input_embeddings().weight, lm.get_output_embeddings().weight}:
                matrix[new_ids] = matrix[source].mean(dim=0)
    return ThoughtTokens(*ids)


class CachedStepper:
    """Runs a causal LM one chunk at a time over a growing KV cache and a 2-D attention mask that grows with it.

    ``step`` returns the last-layer hidden states (after the final norm) of the new chunk; position ids are
    ``cumsum(mask) - 1`` over the whole mask, so left pads and masked thought slots do not shift real positions.
    This is the one place that touches the cache, so a transformers cache-API change is fixed here only.
    """

    def __init__(self, model: nn.Module):
        lm = _causal_lm(model)
        self.decoder = lm.base_model  # GPT2Model / LlamaModel: returns the hidden states, not full-vocab logits
        self.embed = lm.get_input_embeddings()
        self.head = lm.get_output_embeddings()
        self.cache = DynamicCache(config=lm.config)
        self.mask: Tensor | None = None

    def step(self, embeds: Tensor, mask: Tensor) -> Tensor:
        """embeds: [B, T, H], mask: [B, T] (1 = attend) -> hidden [B, T, H]."""
        mask = mask.to(dtype=torch.long, device=embeds.device)
        self.mask = mask if self.mask is None else torch.cat([self.mask, mask], dim=1)
        positions = (self.mask.cumsum(dim=1) - 1).clamp(min=0)[:, -embeds.shape[1] :]
        out = self.decoder(
            inputs_embeds=embeds,
            attention_mask=self.mask,
            position_ids=positions,
            past_key_values=self.cache,
            use_cache=True,
        )
        self.cache = out.past_key_values
        if self.cache is None or self.cache.get_seq_length() != self.mask.shape[1]:
            # transformers drops the cache under gradient checkpointing; later chunks would then see nothing
            raise ConfigError(
                f"{type(self.decoder).__name__} did not keep the KV cache ({self.mask.shape[1]} positions expected); "
                "continuous thoughts need it: disable gradient checkpointing for the reasoner"
            )
        return out.last_hidden_state

    def run_thoughts(
        self, hidden: Tensor, thought_mask: Tensor, thought_fn: ThoughtFn | None, stop_fn: StopFn | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Feed n thoughts, one incremental forward each, starting from hidden [B, H] of the last prefix column.

        thought_mask: [B, n]. ``stop_fn(index)`` (called after ``thought_fn`` at each slot) returns a bool [B] of rows
        that stop here: that slot and every later one is masked for them (ATP-Latent's stop head).
        Returns (contexts [B, n, H]: the hidden state before each slot, inputs [B, n, H]: what was fed, last [B, H]:
        the hidden state after each row's last real thought, or ``hidden`` when it has none, mask [B, n]: the slots
        used, ``thought_mask`` less the stopped ones).
        """
        contexts, inputs, last = [], [], hidden
        thought_mask = thought_mask.clone()
        for index in range(thought_mask.shape[1]):
            fed = hidden if thought_fn is None else thought_fn(index, hidden)
            if stop_fn is not None:
                stopping = stop_fn(index).to(thought_mask.device)
                thought_mask[stopping, index:] = 0
            contexts.append(hidden)
            inputs.append(fed)
            hidden = self.step(fed.unsqueeze(1), thought_mask[:, index : index + 1])[:, -1]
            last = torch.where(thought_mask[:, index : index + 1].bool(), hidden, last)
        if not contexts:
            empty = hidden.new_zeros(hidden.shape[0], 0, hidden.shape[1])
            return empty, empty, last, thought_mask
        return torch.stack(contexts, dim=1), torch.stack(inputs, dim=1), last, thought_mask


@dataclass
class ThoughtBatch:
    """Tensors of a continuous-thought batch (see the module docstring for the padding layout)."""

    prefix_ids: Tensor
    """[B, P] question (+ ``<bot>``), left-padded."""
    prefix_mask: Tensor
    """[B, P] 1 on real tokens."""
    thought_mask: Tensor
    """[B, n] 1 on the thought slots a row uses; all ones unless unused slots are masked."""
    suffix_ids: Tensor
    """[B, S] ``<eot>`` + language tokens, right-padded."""
    suffix_mask: Tensor
    """[B, S] 1 on real tokens."""
    suffix_labels: Tensor
    """[B, S] the supervised token at each suffix position, ``IGNORE_INDEX`` elsewhere."""

    @property
    def n_thoughts(self) -> int:
        return self.thought_mask.shape[1]


def _pad(rows: Sequence[Sequence[int]], value: int, left: bool) -> Tensor:
    width = max((len(row) for row in rows), default=0)
    padded = [
        ([value] * (width - len(row)) + list(row)) if left else (list(row) + [value] * (width - len(row)))
        for row in rows
    ]
    return torch.tensor(padded, dtype=torch.long).reshape(len(rows), width)


def collate_layouts(layouts: Sequence[CoTLayout], pad_id: int, mask_unused_thoughts: bool = False) -> ThoughtBatch:
    """Pad curriculum layouts into a ``ThoughtBatch``; the thought count is the batch maximum for every row."""
    n_max = max(layout.n_thoughts for layout in layouts)
    counts = torch.tensor([layout.n_thoughts for layout in layouts])
    if mask_unused_thoughts:
        thought_mask = (torch.arange(n_max)[None, :] < counts[:, None]).long()
    else:
        thought_mask = torch.ones(len(layouts), n_max, dtype=torch.long)
    prefixes = [layout.prefix_ids for layout in layouts]
    suffixes = [layout.suffix_ids for layout in layouts]
    return ThoughtBatch(
        prefix_ids=_pad(prefixes, pad_id, left=True),
        prefix_mask=_pad([[1] * len(p) for p in prefixes], 0, left=True),
        thought_mask=thought_mask,
        suffix_ids=_pad(suffixes, pad_id, left=False),
        suffix_mask=_pad([[1] * len(s) for s in suffixes], 0, left=False),
        suffix_labels=_pad([layout.suffix_labels for layout in layouts], IGNORE_INDEX, left=False),
    )


@dataclass
class ThoughtOutput:
    """Result of ``thought_forward``."""

    loss: Tensor
    """Scalar: token-mean cross-entropy over the supervised suffix tokens of the batch (Coconut's convention)."""
    n_label_tokens: int
    predictor_hidden: Tensor
    """[B, S, H] the hidden state that predicts suffix token j (the last thought's output for j = 0)."""
    thought_contexts: Tensor
    """[B, n, H] the last-layer hidden state before each thought slot (slot 0: the ``<bot>`` column)."""
    thought_inputs: Tensor
    """[B, n, H] the embedding fed at each slot (= contexts for plain Coconut; ``thought_fn``'s output otherwise)."""
    logits: Tensor | None = None
    """[B, S, V] when asked for: logits[:, j] predicts suffix token j."""


def label_logprobs(head: nn.Module, predictor_hidden: Tensor, labels: Tensor) -> Tensor:
    """Log-probability of each labelled token; the LM head runs only on labelled positions.

    predictor_hidden: [B, S, H], labels: [B, S] -> logp: [B, S], 0 where the label is ``IGNORE_INDEX``.
    """
    has_label = labels != IGNORE_INDEX
    logits = head(predictor_hidden[has_label]).float()  # [N, V]
    picked = logits.log_softmax(dim=-1).gather(-1, labels[has_label].unsqueeze(-1)).squeeze(-1)  # [N]
    logp = predictor_hidden.new_zeros(labels.shape, dtype=picked.dtype)
    return logp.masked_scatter(has_label, picked)


def thought_forward(
    model: nn.Module, batch: ThoughtBatch, thought_fn: ThoughtFn | None = None, return_logits: bool = False
) -> ThoughtOutput:
    """Training forward with continuous thoughts: 1 pass for the prefix, 1 per thought, 1 for the suffix.

    Gradients flow through the whole chain of thoughts (nothing is detached). Total compute is one forward over the
    sequence; only the n thought passes are sequential.
    """
    stepper = CachedStepper(model)
    device = stepper.embed.weight.device
    prefix_hidden = stepper.step(stepper.embed(batch.prefix_ids.to(device)), batch.prefix_mask)  # [B, P, H]
    contexts, inputs, last, _ = stepper.run_thoughts(prefix_hidden[:, -1], batch.thought_mask.to(device), thought_fn)
    suffix_hidden = stepper.step(stepper.embed(batch.suffix_ids.to(device)), batch.suffix_mask)  # [B, S, H]
    predictor = torch.cat([last.unsqueeze(1), suffix_hidden[:, :-1]], dim=1)  # [B, S, H]
    labels = batch.suffix_labels.to(device)
    n_label = int((labels != IGNORE_INDEX).sum())
    logp = label_logprobs(stepper.head, predictor, labels)
    loss = -logp.sum() / max(n_label, 1)
    logits = stepper.head(predictor) if return_logits else None
    return ThoughtOutput(loss, n_label, predictor, contexts, inputs, logits)


@dataclass
class GenerationResult:
    """Greedy decoding with thoughts; counts are per sample."""

    token_ids: list[list[int]]
    """Generated language tokens, up to and excluding EOS."""
    texts: list[str]
    """Decoded ``token_ids`` (special tokens skipped); empty strings when no tokenizer was given."""
    n_latent_tokens: list[int]
    """Thoughts fed (``<bot>``/``<eot>`` are not counted, as in Coconut's token counts)."""
    n_language_tokens: list[int]
    """Language tokens generated before EOS (EOS itself is not counted)."""
    thought_inputs: Tensor
    """[B, n, H] what was fed at each thought slot."""


def next_token(logits: Tensor, temperature: float = 0.0, generator: torch.Generator | None = None) -> Tensor:
    """argmax of ``logits`` (greedy) or, for ``temperature > 0``, a sample of softmax(logits / T) (Gumbel-max)."""
    logits = logits.float()
    if temperature <= 0:
        return logits.argmax(dim=-1)
    uniform = torch.rand(logits.shape, generator=generator, device=logits.device).clamp_(1e-10, 1.0)
    return (logits / temperature - torch.log(-torch.log(uniform))).argmax(dim=-1)


@torch.no_grad()
def generate_from_ids(
    model: nn.Module,
    prefix_ids: Sequence[Sequence[int]],
    n_thoughts: int | Sequence[int],
    max_new_tokens: int,
    eos_id: int,
    eot_id: int | None,
    pad_id: int = 0,
    thought_fn: ThoughtFn | None = None,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    stop_fn: StopFn | None = None,
) -> GenerationResult:
    """Batched decoding over a KV cache: prefix, thoughts, ``<eot>`` (if given), then language tokens.

    Greedy by default; ``temperature > 0`` samples the language tokens (``next_token``) from ``generator``.
    ``n_thoughts`` per row masks the unused slots of shorter rows, so no row depends on the others; ``stop_fn``
    (see ``CachedStepper.run_thoughts``) ends a row's thoughts early, and the counts returned are the slots used.
    """
    batch = len(prefix_ids)
    counts = [n_thoughts] * batch if isinstance(n_thoughts, int) else list(n_thoughts)
    if len(counts) != batch:
        raise ConfigError(f"n_thoughts has {len(counts)} entries for {batch} prompts")
    stepper = CachedStepper(model)
    device = stepper.embed.weight.device
    ids = _pad(prefix_ids, pad_id, left=True).to(device)
    mask = _pad([[1] * len(p) for p in prefix_ids], 0, left=True).to(device)
    n_max = max(counts, default=0)
    thought_mask = (torch.arange(n_max, device=device)[None, :] < torch.tensor(counts, device=device)[:, None]).long()
    hidden = stepper.step(stepper.embed(ids), mask)[:, -1]
    _, inputs, hidden, used = stepper.run_thoughts(hidden, thought_mask, thought_fn, stop_fn)
    counts = used.sum(dim=1).tolist()
    ones = torch.ones(batch, 1, dtype=torch.long, device=device)
    if eot_id is not None:
        hidden = stepper.step(stepper.embed(ones * eot_id), ones)[:, -1]
    generated = torch.full((batch, max_new_tokens), eos_id, dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    for index in range(max_new_tokens):
        token = next_token(stepper.head(hidden), temperature, generator)  # [B]
        token = torch.where(finished, torch.full_like(token, eos_id), token)
        generated[:, index] = token
        finished |= token == eos_id
        if bool(finished.all()) or index == max_new_tokens - 1:
            break
        hidden = stepper.step(stepper.embed(token.unsqueeze(1)), ones)[:, -1]
    token_ids = []
    for row in generated.tolist():
        token_ids.append(row[: row.index(eos_id)] if eos_id in row else row)
    return GenerationResult(token_ids, [""] * batch, counts, [len(t) for t in token_ids], inputs)


def generate_with_thoughts(
    model: nn.Module,
    tokenizer,
    questions: Sequence[str],
    n_thoughts: int | Sequence[int],
    max_new_tokens: int,
    thought_tokens: ThoughtTokens | None = None,
    thought_fn: ThoughtFn | None = None,
    markers: bool = True,
    fmt: CoTTextFormat = DEFAULT_FORMAT,
    use_bos: bool | None = None,
) -> GenerationResult:
    """Greedy answers to ``questions`` formatted as in training (``curriculum.question_prompt_ids``).

    ``markers=False`` drops ``<bot>``/``<eot>`` (the cot / no_cot baselines; use ``n_thoughts=0`` with it).
    """
    if thought_tokens is None:
        thought_tokens = _lookup_thought_tokens(tokenizer)
    vocab = LayoutVocab.from_tokenizer(
        tokenizer, thought_tokens.bot_id, thought_tokens.thought_id, thought_tokens.eot_id, use_bos=use_bos
    )
    prefixes = [question_prompt_ids(q, vocab, fmt, markers) for q in questions]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else vocab.eos_id
    result = generate_from_ids(
        model,
        prefixes,
        n_thoughts,
        max_new_tokens,
        eos_id=vocab.eos_id,
        eot_id=thought_tokens.eot_id if markers else None,
        pad_id=pad_id,
        thought_fn=thought_fn,
    )
    result.texts = tokenizer.batch_decode(result.token_ids, skip_special_tokens=True)
    return result


def _lookup_thought_tokens(tokenizer) -> ThoughtTokens:
    vocab = tokenizer.get_vocab()
    missing = [name for name in (BOT_TOKEN, THOUGHT_TOKEN, EOT_TOKEN) if name not in vocab]
    if missing:
        raise ConfigError(f"tokenizer lacks {missing}; call add_thought_tokens(tokenizer, model) first")
    return ThoughtTokens(vocab[BOT_TOKEN], vocab[THOUGHT_TOKEN], vocab[EOT_TOKEN])
