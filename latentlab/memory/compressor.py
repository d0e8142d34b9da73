"""The compressor: one frozen causal LM with compress/query/decode LoRA adapters, a learned memory slot,
a retrieval head (latents and queries into one key space) and a projector into the generator's embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from latentlab.backbones import (
    attach_adapters,
    hidden_size,
    inner_model,
    input_embeddings,
    lm_head,
    use_adapter,
)
from latentlab.configs import CompressorConfig
from latentlab.memory.vision import ImageEmbedHead, VisionEncoder

_PART_PREFIXES = (
    ("memory_slot", "memory_slot"),
    ("retrieval_head", "retrieval_head"),
    ("projector", "projector"),
    ("vision.tower.", "vision_tower"),
    ("vision.projector.", "vision_projector"),
    ("vision.pooled_projector.", "vision_projector"),
    ("image_embed_head.", "image_embed_head"),
)


def part_of(name: str) -> str:
    """Which ``compressor.train_parts`` entry a learned parameter (module or compressor name) belongs to."""
    for adapter in ("compress", "query", "decode", "read"):
        if f".{adapter}." in name and "lora_" in name:
            return f"{adapter}_lora"
    for prefix, part in _PART_PREFIXES:
        if name.removeprefix("model.").removeprefix("compressor.").startswith(prefix):
            return part
    raise ValueError(f"{name}: not a learned compressor parameter")


class RetrievalHead(nn.Module):
    """Linear(H -> d) + LayerNorm + L2 normalisation, shared by queries and evidence."""

    def __init__(self, hidden: int, key_dim: int):
        super().__init__()
        self.proj = nn.Linear(hidden, key_dim)
        self.norm = nn.LayerNorm(key_dim)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.norm(self.proj(latents)), dim=-1)


class Projector(nn.Module):
    """2-layer MLP with GELU and a final LayerNorm from the compressor's H to the generator's embedding G."""

    def __init__(self, hidden: int, target: int, target_scale: float = 1.0):
        super().__init__()
        mid = (hidden + target) // 2
        self.net = nn.Sequential(nn.Linear(hidden, mid), nn.GELU(), nn.Linear(mid, target), nn.LayerNorm(target))
        # Start at the generator's own embedding scale so that latents look like tokens from step 0.
        with torch.no_grad():
            self.net[-1].weight.fill_(target_scale)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.net(latents)


class Compressor(nn.Module):
    """Evidence -> ONE latent (last hidden state at a memory slot appended after the tokens)."""

    def __init__(self, config: CompressorConfig, base_lm: nn.Module, tokenizer: Any, generator_embed: nn.Module):
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        adapters = {"compress": config.compress_lora, "query": config.query_lora, "decode": config.decode_lora}
        if config.read_lora is not None:  # the generator's reading adapter, on the same shared base
            adapters["read"] = config.read_lora
        self.lm = attach_adapters(base_lm, adapters)
        hidden = hidden_size(self.lm)
        self.hidden = hidden
        self.memory_slot = nn.Parameter(torch.randn(hidden) * 0.02)
        self.retrieval_head = RetrievalHead(hidden, config.key_dim)
        gen_weight = generator_embed.weight.detach().float()
        self.projector = Projector(hidden, gen_weight.shape[1], target_scale=float(gen_weight.std()))
        self.bos_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        # The image path (compressor.vision): tower + projector in front, and the head of the embedding-reconstruction
        # loss on the latent. Absent for text-only compressors, so their checkpoints keep their keys.
        self.vision = VisionEncoder(config.vision, hidden) if config.vision is not None else None
        self.image_embed_head = ImageEmbedHead(hidden, self.vision.pooled_dim) if self.vision is not None else None

    # ----------------------------------------------------------------- tokenisation

    def tokenize(self, texts: Sequence[str], max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ids [N, T] and mask [N, T] (no special tokens: the slot marks the end)."""
        encoded = self.tokenizer(
            list(texts),
            add_special_tokens=False,
            truncation=True,
            max_length=max_tokens,
            padding=True,
            return_tensors="pt",
            padding_side="right",
        )
        device = self.memory_slot.device
        return encoded["input_ids"].to(device), encoded["attention_mask"].to(device)

    # ----------------------------------------------------------------- latents

    def encode_ids(self, ids: torch.Tensor, mask: torch.Tensor, adapter: str) -> torch.Tensor:
        """ids, mask: [N, T] right-padded -> latents [N, H] (fp32), through ``adapter``."""
        return self.encode_embeds(input_embeddings(self.lm)(ids), mask, adapter)

    def encode_embeds(self, embeds: torch.Tensor, mask: torch.Tensor, adapter: str) -> torch.Tensor:
        """Prefix embeddings [N, T, H] and mask [N, T], right-padded -> latents [N, H] (fp32).

        What an evidence encoder (``latentlab.memory.evidence``) hands over: text token embeddings now, image
        patch embeddings plus title tokens next. The slot goes right after each row's last real position
        (position = its length), so the latent never sees padding and does not depend on what else is in the batch.
        """
        use_adapter(self.lm, adapter)
        n, width = mask.shape
        lengths = mask.sum(dim=1)
        rows = torch.arange(n, device=embeds.device)
        embeds = torch.cat([embeds, embeds.new_zeros(n, 1, embeds.shape[-1])], dim=1)  # [N, T+1, H]
        slot = self.memory_slot.to(embeds.dtype).expand(n, -1)
        embeds = embeds.index_put((rows, lengths), slot)
        slot_mask = torch.cat([mask, mask.new_zeros(n, 1)], dim=1).index_put((rows, lengths), torch.ones_like(lengths))
        positions = torch.arange(width + 1, device=embeds.device).expand(n, -1)
        hidden = inner_model(self.lm)(
            inputs_embeds=embeds, attention_mask=slot_mask, position_ids=positions, use_cache=False
        ).last_hidden_state
        return hidden[rows, lengths].float()

    def encode_evidence(self, texts: Sequence[str]) -> torch.Tensor:
        """Evidence texts -> latents [N, H] through the compress adapter (``encode_items`` takes Evidence items)."""
        ids, mask = self.tokenize(texts, self.config.max_evidence_tokens)
        return self.encode_ids(ids, mask, "compress")

    def encode_items(self, items: Sequence) -> torch.Tensor:
        """Evidence items -> latents [N, H] in input order: each kind of item through its evidence encoder (one
        batch per kind; a latent does not depend on its batch), then the memory slot."""
        from latentlab.memory.evidence import encode_prefix, rows_by_kind

        groups = rows_by_kind(items)
        if len(groups) <= 1:
            embeds, mask = encode_prefix(self, items)
            return self.encode_embeds(embeds, mask, "compress")
        rows, parts = [], []
        for group in groups.values():
            embeds, mask = encode_prefix(self, [items[i] for i in group])
            parts.append(self.encode_embeds(embeds, mask, "compress"))
            rows += group
        order = torch.argsort(torch.tensor(rows, device=parts[0].device))
        return torch.cat(parts)[order]

    def encode_queries(self, texts: Sequence[str]) -> torch.Tensor:
        ids, mask = self.tokenize(texts, self.config.max_query_tokens)
        return self.encode_ids(ids, mask, "query")

    def keys(self, latents: torch.Tensor) -> torch.Tensor:
        """[N, H] latents -> [N, d] L2-normalised retrieval keys."""
        return self.retrieval_head(latents)

    def project(self, latents: torch.Tensor) -> torch.Tensor:
        """[N, H] latents -> [N, G] generator input embeddings."""
        return self.projector(latents)

    # ----------------------------------------------------------------- reconstruction

    def reconstruction_logits(
        self, latents: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode adapter reads [z, BOS, x1..xn] and predicts x1..xn, EOS.

        latents: [N, H]; ids, mask: [N, T] right-padded. Returns logits [M, V] and targets [M] at the M
        labelled positions only (no vocabulary projection of unlabelled positions).
        """
        use_adapter(self.lm, "decode")
        n, width = ids.shape
        embed = input_embeddings(self.lm)
        bos = embed(torch.full((n, 1), self.bos_id, dtype=torch.long, device=ids.device))
        z = rearrange(latents.to(bos.dtype), "n h -> n 1 h")
        embeds = torch.cat([z, bos, embed(ids)], dim=1)  # [N, T+2, H]
        attn = torch.cat([mask.new_ones(n, 2), mask], dim=1)
        lengths = mask.sum(dim=1)
        # Position j+1 (BOS, x1, ...) predicts x_{j+1}; position 1+len predicts EOS.
        targets = torch.full((n, width + 2), -100, dtype=torch.long, device=ids.device)
        targets[:, 1 : width + 1] = torch.where(mask.bool(), ids, torch.full_like(ids, -100))
        rows = torch.arange(n, device=ids.device)
        eos = self.tokenizer.eos_token_id
        targets = targets.index_put((rows, lengths + 1), torch.full_like(lengths, eos))
        positions = torch.arange(width + 2, device=ids.device).expand(n, -1)
        hidden = inner_model(self.lm)(
            inputs_embeds=embeds, attention_mask=attn, position_ids=positions, use_cache=False
        ).last_hidden_state
        labelled = targets != -100
        return lm_head(self.lm)(hidden[labelled]), targets[labelled]

    # ----------------------------------------------------------------- weights

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """LoRA weights, memory slot, retrieval head and projector: what a checkpoint needs."""
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        return {k: v for k, v in self.state_dict().items() if k in trainable}
