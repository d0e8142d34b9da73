"""Generator prompts with latent slots (read through ``inputs_embeds``) or raw text, and token accounting.

A prompt is a list of token ids where ``LATENT`` marks a slot that receives a projected latent; the three
token counts of the paper (full prompt, without the system prompt, context only) are measured on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

LATENT = -1
PLACEHOLDER = "\x00CTX\x00"
SlotFormat = Literal["paper", "compact"]


@dataclass
class Prompt:
    """Token ids (``LATENT`` at latent slots) and where the context starts and ends."""

    ids: list[int]
    context_start: int
    context_end: int
    truncated_items: int = 0
    """Raw-text passages (and the question) cut to the builder's ``max_item_tokens``."""

    @property
    def total_tokens(self) -> int:
        return len(self.ids)

    @property
    def no_system_tokens(self) -> int:
        """From the first context marker (or the question when there is none) to the end."""
        return len(self.ids) - self.context_start

    @property
    def context_tokens(self) -> int:
        return self.context_end - self.context_start

    @property
    def num_latents(self) -> int:
        return sum(1 for i in self.ids if i == LATENT)


@dataclass
class PromptBuilder:
    """Splits the generator's chat template around the context, then assembles prompts per question."""

    tokenizer: Any
    system_prompt: str
    slot_format: SlotFormat = "paper"
    max_item_tokens: int | None = None
    """Each passage and the question are cut to this many tokens (None: no cut), so that no text can make a prompt
    longer than the generator fits; ``Prompt.truncated_items`` counts the cuts."""
    prefix_ids: list[int] = field(init=False)
    suffix_text: str = field(init=False)
    _label_cache: dict[str, list[int]] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        user = PLACEHOLDER + "{question}"
        if getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": user}]
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:  # models without a chat template
            bos = self.tokenizer.bos_token or ""
            text = f"{bos}{self.system_prompt}\nUSER: {user}\nASSISTANT:"
        prefix, suffix = text.split(PLACEHOLDER)
        self.prefix_ids = self._ids(prefix)
        self.suffix_text = suffix

    def _ids(self, text: str) -> list[int]:
        if text not in self._label_cache:
            self._label_cache[text] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self._label_cache[text]

    def _cut(self, text: str) -> tuple[str, bool]:
        """``text`` cut to ``max_item_tokens`` tokens (decoded back), and whether it was cut."""
        if self.max_item_tokens is None or len(text) <= self.max_item_tokens:  # a token is at least one character
            return text, False
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= self.max_item_tokens:
            return text, False
        return self.tokenizer.decode(ids[: self.max_item_tokens]), True

    def _finish(self, context: list[int], question: str, truncated: int = 0) -> Prompt:
        question, cut = self._cut(question)
        lead = "\nQuestion: " if context else "Question: "
        suffix = self.tokenizer(self.suffix_text.format(question=lead + question), add_special_tokens=False)[
            "input_ids"
        ]
        start = len(self.prefix_ids)
        return Prompt(
            ids=self.prefix_ids + context + suffix,
            context_start=start,
            context_end=start + len(context),
            truncated_items=truncated + int(cut),
        )

    def latent(self, question: str, num_latents: int) -> Prompt:
        """`Latent context 1: <z1>\\nLatent context 2: <z2>...` (paper) or `Latent context: <z1><z2>...`."""
        context: list[int] = []
        if self.slot_format == "paper":
            for i in range(num_latents):
                context += self._ids(f"{'' if i == 0 else chr(10)}Latent context {i + 1}: ") + [LATENT]
        elif num_latents:
            context = self._ids("Latent context: ") + [LATENT] * num_latents
        return self._finish(context, question)

    def text(self, question: str, passages: Sequence[str]) -> Prompt:
        """`Context 1: s1\\nContext 2: s2...` raw-text prompt (the teacher and the RAG baselines)."""
        cuts = [self._cut(p) for p in passages]
        body = "\n".join(f"Context {i + 1}: {p}" for i, (p, _) in enumerate(cuts))
        context = self.tokenizer(body, add_special_tokens=False)["input_ids"] if passages else []
        return self._finish(context, question, truncated=sum(cut for _, cut in cuts))


@dataclass(frozen=True)
class ItemCost:
    """Generator context tokens one evidence item costs: as a latent, as raw text, and as an image a VLM reads."""

    id: str
    modality: str
    latent: int
    """Its slot in a `paper` latent prompt: the `Latent context i: ` label and the one latent."""
    raw_text: int | None
    """`Context i: ` and its text (an image's description); None for an image without one."""
    vlm_image: int | None
    """`Context i: `, the image's patch tokens (576 for LLaVA-1.5's ViT-L/14-336) and its title; None for text."""


def item_costs(builder: PromptBuilder, items: Sequence[Any], patch_tokens: int | None) -> list[ItemCost]:
    """What each item costs the generator's context three ways (``ItemCost``), measured with ``builder``'s tokenizer
    on the first slot of a prompt. ``patch_tokens``: the vision tower's patches (None: no vision path)."""
    latent = builder.latent("?", 1).context_tokens
    costs = []
    for item in items:
        described = bool(item.text and item.text.strip())
        raw = builder.text("?", [item.display_text()]).context_tokens if described else None
        vlm = None
        if item.image:
            title = builder.text("?", [f"Title: {item.title}" if item.title else ""]).context_tokens
            vlm = title + (patch_tokens or 0)
        costs.append(ItemCost(item.id, "image" if item.image else "text", latent, raw, vlm))
    return costs


@dataclass
class PackedPrompts:
    """A padded batch of prompts (+ optional continuation tokens) as generator inputs."""

    inputs_embeds: torch.Tensor  # [B, T, G]
    attention_mask: torch.Tensor  # [B, T]
    position_ids: torch.Tensor  # [B, T]
    continuation_mask: torch.Tensor  # [B, T] True at positions whose NEXT token is a continuation token
    continuation_targets: torch.Tensor  # [N] the continuation tokens, in row-major order of the mask
    prefix_ids: tuple[int, ...] = ()  # leading tokens every row shares, left out of the tensors above (split_prefix)


def pack_prompts(
    prompts: Sequence[Prompt],
    embed: nn.Module,
    latents: torch.Tensor | None = None,
    continuations: Sequence[Sequence[int]] | None = None,
    padding_side: Literal["left", "right"] = "right",
    pad_id: int = 0,
    split_prefix: bool = False,
) -> PackedPrompts:
    """Embed prompts, write projected latents into their slots and pad the batch.

    latents: [S, G] for the S = sum of slots, ordered by prompt then slot. continuations: tokens appended
    after each prompt (teacher forcing); the mask marks the positions that predict them.
    split_prefix (right padding only): the leading tokens all rows share (the system prompt) are left out of
    the tensors and named in ``prefix_ids``, so the generator can read them from a key/value cache; positions
    still count them.
    """
    continuations = continuations if continuations is not None else [[] for _ in prompts]
    prefix: tuple[int, ...] = ()
    if split_prefix:
        if padding_side != "right":
            raise ValueError("split_prefix needs right padding: left padding puts pads before the shared prefix")
        prefix = tuple(common_prefix([p.ids for p in prompts], max_len=min(len(p.ids) for p in prompts) - 1))
        prompts = [Prompt(p.ids[len(prefix) :], 0, 0) for p in prompts]
    rows = [list(p.ids) + list(c) for p, c in zip(prompts, continuations)]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    predicts = torch.zeros((len(rows), width), dtype=torch.bool)
    targets: list[int] = []
    for b, (row, prompt, cont) in enumerate(zip(rows, prompts, continuations)):
        offset = width - len(row) if padding_side == "left" else 0
        ids[b, offset : offset + len(row)] = torch.tensor(row, dtype=torch.long)
        mask[b, offset : offset + len(row)] = 1
        if cont:
            first = offset + len(prompt.ids) - 1  # the last prompt position predicts the first continuation token
            predicts[b, first : first + len(cont)] = True
            targets.extend(cont)
    slots = ids == LATENT
    weight = embed.weight
    embeds = embed(ids.clamp_min(0).to(weight.device))
    if slots.any():
        if latents is None or latents.shape[0] != int(slots.sum()):
            expected = int(slots.sum())
            raise ValueError(
                f"prompts have {expected} latent slots but {0 if latents is None else latents.shape[0]} latents were given"
            )
        embeds = embeds.masked_scatter(slots.to(weight.device).unsqueeze(-1), latents.to(embeds.dtype))
    if padding_side == "left":
        positions = (mask.cumsum(dim=1) - 1).clamp_min(0)
    else:
        positions = torch.arange(len(prefix), len(prefix) + width).unsqueeze(0).expand(len(rows), width).clone()
    device = weight.device
    return PackedPrompts(
        inputs_embeds=embeds,
        attention_mask=mask.to(device),
        position_ids=positions.to(device),
        continuation_mask=predicts.to(device),
        continuation_targets=torch.tensor(targets, dtype=torch.long, device=device),
        prefix_ids=prefix,
    )


def common_prefix(rows: Sequence[Sequence[int]], max_len: int) -> list[int]:
    """The longest run of leading token ids (no latent slot) that every row shares, at most ``max_len``."""
    prefix: list[int] = []
    for column in zip(*rows):
        if len(prefix) >= max_len or column[0] == LATENT or any(t != column[0] for t in column):
            break
        prefix.append(column[0])
    return prefix
