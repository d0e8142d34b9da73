"""Coconut continuous thoughts for any Hugging Face causal LM: the last hidden state is fed back as the next input.

Training forward and greedy generation share one KV-cached stepper, with position ids derived from the attention mask.

A batch is ``[question] <bot> <thought>*n <eot> [language]``: the part before the thoughts (the *prefix*) is left-padded
so that its last column (``<bot>``) lines up for every row, the thought slots then share columns, and the part after
(the *suffix*: ``<eot>`` and the language tokens) is right-padded. Every row has the same number n of thought slots
(Coconut's ``pad_latent_to_max`` within a batch); a row with fewer thoughts either runs extra thoughts
(``mask_unused_thoughts=False``, Coconut's behaviour) or has the unused slots masked out of attention and position ids,
which makes its result independent of the rest of the batch.

Seams for RL (the policy losses themselves live elsewhere):

- generation records the log-probability of every token it chooses (and optionally the top-K log-probs), under the
  distribution it sampled from (``GenerationResult.chosen_logprobs``: after temperature and any top-k / top-p
  renormalisation), and the same token under the tempered but unfiltered distribution (``tempered_logprobs``);
- a stochastic thought hook (a ``ThoughtPolicy`` run through ``recording_thoughts``) records each thought it feeds and
  what it needs to recompute its log-density; ``replaying_thoughts`` then makes ``thought_forward`` feed exactly those
  thoughts and recompute that log-density with gradients, and ``rollout_batch`` turns a rollout into the
  ``ThoughtBatch`` that recomputes its token log-probs.
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
from latentlab.reasoning.replay import (  # noqa: F401 - record/replay names stay importable from here
    RecordedThoughts,
    ReplayTrace,
    ThoughtDraw,
    ThoughtFn,
    ThoughtPolicy,
    ThoughtRecorder,
    recording_thoughts,
    replaying_thoughts,
)
from latentlab.reasoning.sampling import (  # noqa: F401 - sampling names stay importable from here
    check_sampling,
    filter_logits,
    gumbel_max,
    next_token,
    sampling_logits,
)

BOT_TOKEN = "<bot>"
THOUGHT_TOKEN = "<thought>"
EOT_TOKEN = "<eot>"


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
        out = self.decoder(  # ``cache``/``out.cache``: transformers 5.24 renamed ``past_key_values`` (gone in 5.40)
            inputs_embeds=embeds,
            attention_mask=self.mask,
            position_ids=positions,
            cache=self.cache,
            use_cache=True,
        )
        self.cache = out.cache
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


def label_logprobs(head: nn.Module, predictor_hidden: Tensor, labels: Tensor, temperature: float = 1.0) -> Tensor:
    """Log-probability of each labelled token; the LM head runs only on labelled positions.

    predictor_hidden: [B, S, H], labels: [B, S] -> logp: [B, S], 0 where the label is ``IGNORE_INDEX``.
    ``temperature`` (> 0) scores under log_softmax(logits / T), the distribution ``generate_from_ids`` samples from
    (so a rollout's ``chosen_logprobs`` are recomputed with the same T).
    """
    if temperature <= 0:
        raise ConfigError(f"label_logprobs needs temperature > 0, got {temperature}")
    has_label = labels != IGNORE_INDEX
    logits = head(predictor_hidden[has_label]).float()  # [N, V]
    if temperature != 1.0:
        logits = logits / temperature
    picked = logits.log_softmax(dim=-1).gather(-1, labels[has_label].unsqueeze(-1)).squeeze(-1)  # [N]
    logp = predictor_hidden.new_zeros(labels.shape, dtype=picked.dtype)
    return logp.masked_scatter(has_label, picked)


def thought_forward(
    model: nn.Module, batch: ThoughtBatch, thought_fn: ThoughtFn | None = None, return_logits: bool = False
) -> ThoughtOutput:
    """Training forward with continuous thoughts: 1 pass for the prefix, 1 per thought, 1 for the suffix.

    Gradients flow through the whole chain of thoughts (nothing is detached). Total compute is one forward over the
    sequence; only the n thought passes are sequential. To recompute a rollout, pass ``rollout_batch(...)`` and the
    ``thought_fn`` of ``replaying_thoughts``: the recorded thoughts are fed as they were (so the chain is cut there).
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


# ---------------------------------------------------------------- recorded and replayed thoughts (RL)


@dataclass
class GenerationResult:
    """Decoding with thoughts; counts are per sample.

    The tensors below are filled by ``generate_from_ids`` (``None`` when a result is built elsewhere). T is
    ``max_new_tokens`` for every row; positions after a row's first EOS (and after the loop ended because every row
    had finished) are padding: ``token_mask`` is False there, log-probs and logits are 0 and ids are ``eos_id``.
    The log-probs are those of the distribution the token was drawn from, log_softmax(logits / T) for
    ``temperature`` T > 0, and log_softmax(logits) (T = 1, the model's own distribution) for greedy decoding.
    With ``top_k`` / ``top_p`` filtering (``sampling_logits``) that distribution is the filtered one, renormalised
    over the kept tokens; ``tempered_logprobs`` keeps the same token's log-prob under log_softmax(logits / T) before
    filtering. Which one a trainer calls mu matters once filtering is on: TRL's vLLM rollouts record vLLM's
    ``processed_logprobs`` (after temperature and top-k/top-p: ``chosen_logprobs``), while TRL's and verl's training
    recompute score log_softmax(logits / T) with no top-k/top-p (verl's actor: ``logits.div_(temperature)``):
    ``tempered_logprobs``. Without filtering the two are equal.
    """

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
    thought_mask: Tensor | None = None
    """[B, n] long, 1 on the thought slots each row used (``n_thoughts`` less any slots ``stop_fn`` ended)."""
    generated_ids: Tensor | None = None
    """[B, T] long: the token chosen at each position, EOS included; ``eos_id`` after it."""
    token_mask: Tensor | None = None
    """[B, T] bool: True on the positions a row generated, up to and including its first EOS (the EOS choice is an
    action too), so ``token_mask.sum(1)`` is ``n_language_tokens`` (+ 1 where EOS was generated)."""
    chosen_logprobs: Tensor | None = None
    """[B, T] float32: log-probability of ``generated_ids`` under the sampled-from distribution (after temperature and
    top-k / top-p renormalisation); 0 on padding."""
    tempered_logprobs: Tensor | None = None
    """[B, T] float32: the same tokens under log_softmax(logits / T), no top-k / top-p (T = 1 when greedy); equal to
    ``chosen_logprobs`` unless filtering is on; 0 on padding."""
    top_logprobs: Tensor | None = None
    """[B, T, K] float32, with ``top_k_logprobs=K > 0``: the K largest log-probs of the sampled-from distribution,
    descending (``-inf`` beyond the tokens top-k / top-p kept); 0 on padding."""
    top_ids: Tensor | None = None
    """[B, T, K] long: their token ids; ``eos_id`` on padding."""
    logits: Tensor | None = None
    """[B, T, V] float32, with ``return_logits=True``: the raw LM-head logits (before temperature); 0 on padding."""


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
    top_k_logprobs: int = 0,
    return_logits: bool = False,
    top_k: int = 0,
    top_p: float = 1.0,
) -> GenerationResult:
    """Batched decoding over a KV cache: prefix, thoughts, ``<eot>`` (if given), then language tokens.

    Greedy by default; ``temperature > 0`` samples the language tokens (``next_token``) from ``generator``, with
    optional ``top_k`` (0 = off) and ``top_p`` (1 = off) filtering after the temperature; the defaults draw exactly
    the tokens of plain temperature sampling. ``chosen_logprobs`` are of the filtered, renormalised distribution,
    ``tempered_logprobs`` of the unfiltered tempered one (see ``GenerationResult``).
    ``n_thoughts`` per row masks the unused slots of shorter rows, so no row depends on the others; ``stop_fn``
    (see ``CachedStepper.run_thoughts``) ends a row's thoughts early, and the counts returned are the slots used.
    Every chosen token's log-prob is recorded (``GenerationResult.chosen_logprobs``, [B, T]); ``top_k_logprobs=K``
    adds the top-K log-probs and ids ([B, T, K]) and ``return_logits`` the raw logits ([B, T, V]). Recording changes
    no token: greedy and sampled outputs are those of a call without it.
    """
    batch = len(prefix_ids)
    counts = [n_thoughts] * batch if isinstance(n_thoughts, int) else list(n_thoughts)
    if len(counts) != batch:
        raise ConfigError(f"n_thoughts has {len(counts)} entries for {batch} prompts")
    if top_k_logprobs < 0:
        raise ConfigError(f"top_k_logprobs must be >= 0, got {top_k_logprobs}")
    check_sampling(temperature, top_k, top_p)
    filtering = temperature > 0 and (top_k > 0 or top_p < 1.0)
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
    token_mask = torch.zeros(batch, max_new_tokens, dtype=torch.bool, device=device)
    chosen = torch.zeros(batch, max_new_tokens, dtype=torch.float32, device=device)
    tempered = torch.zeros(batch, max_new_tokens, dtype=torch.float32, device=device) if filtering else chosen
    tops: list[tuple[Tensor, Tensor]] = []
    raw: list[Tensor] = []
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    for index in range(max_new_tokens):
        logits = stepper.head(hidden)  # [B, V]
        scaled = logits.float() / temperature if temperature > 0 else logits.float()
        sampled_from = filter_logits(scaled, top_k, top_p) if filtering else scaled
        # ``next_token``'s draw, on the scores already computed (plain T sampling when ``filtering`` is off)
        token = gumbel_max(sampled_from, generator) if temperature > 0 else scaled.argmax(dim=-1)  # [B]
        token = torch.where(finished, torch.full_like(token, eos_id), token)
        generated[:, index] = token
        active = ~finished
        token_mask[:, index] = active
        logp = sampled_from.log_softmax(dim=-1)  # the distribution ``token`` was drawn from (T = 1 when greedy)
        chosen[:, index] = logp.gather(-1, token.unsqueeze(-1)).squeeze(-1).masked_fill(finished, 0.0)
        if filtering:
            unfiltered = scaled.log_softmax(dim=-1).gather(-1, token.unsqueeze(-1)).squeeze(-1)
            tempered[:, index] = unfiltered.masked_fill(finished, 0.0)
        if top_k_logprobs:
            if top_k_logprobs > logp.shape[-1]:
                raise ConfigError(f"top_k_logprobs {top_k_logprobs} exceeds the vocabulary ({logp.shape[-1]})")
            top_values, top_ix = logp.topk(top_k_logprobs, dim=-1)
            tops.append((top_values.masked_fill(finished[:, None], 0.0), top_ix.masked_fill(finished[:, None], eos_id)))
        if return_logits:
            raw.append(logits.float().masked_fill(finished[:, None], 0.0))
        finished |= token == eos_id
        if bool(finished.all()) or index == max_new_tokens - 1:
            break
        hidden = stepper.step(stepper.embed(token.unsqueeze(1)), ones)[:, -1]
    token_ids = []
    for row in generated.tolist():
        token_ids.append(row[: row.index(eos_id)] if eos_id in row else row)
    result = GenerationResult(token_ids, [""] * batch, counts, [len(t) for t in token_ids], inputs)
    result.thought_mask = used
    result.generated_ids, result.token_mask, result.chosen_logprobs = generated, token_mask, chosen
    result.tempered_logprobs = tempered if filtering else chosen.clone()
    if top_k_logprobs:
        result.top_logprobs = torch.zeros(batch, max_new_tokens, top_k_logprobs, dtype=torch.float32, device=device)
        result.top_ids = torch.full((batch, max_new_tokens, top_k_logprobs), eos_id, dtype=torch.long, device=device)
        if tops:
            result.top_logprobs[:, : len(tops)] = torch.stack([v for v, _ in tops], dim=1)
            result.top_ids[:, : len(tops)] = torch.stack([i for _, i in tops], dim=1)
    if return_logits:
        width = raw[0].shape[-1] if raw else stepper.head(hidden).shape[-1]
        result.logits = torch.zeros(batch, max_new_tokens, width, dtype=torch.float32, device=device)
        if raw:
            result.logits[:, : len(raw)] = torch.stack(raw, dim=1)
    return result


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
    top_k_logprobs: int = 0,
) -> GenerationResult:
    """Greedy answers to ``questions`` formatted as in training (``curriculum.question_prompt_ids``).

    ``markers=False`` drops ``<bot>``/``<eot>`` (the cot / no_cot baselines; use ``n_thoughts=0`` with it).
    ``top_k_logprobs``: see ``generate_from_ids``.
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
        top_k_logprobs=top_k_logprobs,
    )
    result.texts = tokenizer.batch_decode(result.token_ids, skip_special_tokens=True)
    return result


def rollout_batch(
    prefix_ids: Sequence[Sequence[int]], result: GenerationResult, eot_id: int | None, pad_id: int = 0
) -> ThoughtBatch:
    """The ``ThoughtBatch`` whose ``thought_forward`` recomputes a rollout of ``generate_from_ids``.

    ``prefix_ids``, ``eot_id`` and ``pad_id`` as given to ``generate_from_ids``. The suffix is ``<eot>`` (if any)
    and then all T generated positions, labelled where ``result.token_mask`` is set (EOS included), so with
    ``offset = 1 if eot_id is not None else 0`` suffix position ``offset + j`` holds generated token j: the forward's
    ``logits[:, offset:]`` and ``label_logprobs(head, predictor_hidden, suffix_labels, T)[:, offset:]`` are [B, T] and
    line up with ``result.logits`` and ``result.chosen_logprobs``. The thought mask is the slots the rollout used.
    """
    if result.generated_ids is None or result.token_mask is None or result.thought_mask is None:
        raise ConfigError("rollout_batch needs a GenerationResult from generate_from_ids (its tensors are missing)")
    return completion_batch(
        prefix_ids, result.generated_ids, result.token_mask, result.thought_mask, eot_id=eot_id, pad_id=pad_id
    )


def completion_batch(
    prefix_ids: Sequence[Sequence[int]],
    generated_ids: Tensor,
    token_mask: Tensor,
    thought_mask: Tensor,
    eot_id: int | None,
    pad_id: int = 0,
) -> ThoughtBatch:
    """``rollout_batch`` from the tensors themselves: generated_ids [B, T], token_mask [B, T] bool, thought_mask
    [B, n] (the slots each row used)."""
    batch, _ = generated_ids.shape
    if len(prefix_ids) != batch or thought_mask.shape[0] != batch or token_mask.shape != generated_ids.shape:
        raise ConfigError(
            f"{len(prefix_ids)} prefixes, thought mask {tuple(thought_mask.shape)} and token mask "
            f"{tuple(token_mask.shape)} for a rollout of {tuple(generated_ids.shape)} tokens"
        )
    token_mask = token_mask.bool()
    device = generated_ids.device
    mask = token_mask.long()
    ids = generated_ids.masked_fill(~token_mask, pad_id)
    labels = generated_ids.masked_fill(~token_mask, IGNORE_INDEX)
    if eot_id is not None:
        column = torch.ones(batch, 1, dtype=torch.long, device=device)
        ids = torch.cat([column * eot_id, ids], dim=1)
        mask = torch.cat([column, mask], dim=1)
        labels = torch.cat([column * IGNORE_INDEX, labels], dim=1)
    return ThoughtBatch(
        prefix_ids=_pad(prefix_ids, pad_id, left=True).to(device),
        prefix_mask=_pad([[1] * len(p) for p in prefix_ids], 0, left=True).to(device),
        thought_mask=thought_mask.long().to(device),
        suffix_ids=ids,
        suffix_mask=mask,
        suffix_labels=labels,
    )


def _lookup_thought_tokens(tokenizer) -> ThoughtTokens:
    vocab = tokenizer.get_vocab()
    missing = [name for name in (BOT_TOKEN, THOUGHT_TOKEN, EOT_TOKEN) if name not in vocab]
    if missing:
        raise ConfigError(f"tokenizer lacks {missing}; call add_thought_tokens(tokenizer, model) first")
    return ThoughtTokens(vocab[BOT_TOKEN], vocab[THOUGHT_TOKEN], vocab[EOT_TOKEN])
