"""LatentMemoryModel: the inference object of latent memory (compressor, generator, prompts), built from a config.

It builds and reads memories and answers from latents or raw text. It carries no teacher, no caches and no
optimizer: training wraps it (``LatentMemoryModule``); `index build`, `ask`, `evaluate` and notebooks use it alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from latentlab.backbones import load_causal_lm, spec_name
from latentlab.configs import MemoryExperimentConfig
from latentlab.data.schema import Evidence
from latentlab.errors import ConfigError
from latentlab.memory.compressor import Compressor
from latentlab.memory.generator import Generator
from latentlab.memory.prompting import ItemCost, Prompt, PromptBuilder, item_costs


def shares_base(config: MemoryExperimentConfig) -> bool:
    """Whether the generator is the compressor's own base model (one copy of the weights serves both)."""
    gen, comp = config.generator.backbone, config.compressor.backbone
    return spec_name(gen.model) == spec_name(comp.model) and gen.precision == comp.precision


class LatentMemoryModel(nn.Module):
    """Compressor (adapters, slot, heads) + frozen generator + the prompt format they share."""

    def __init__(self, config: MemoryExperimentConfig):
        super().__init__()
        self.config = config
        comp = load_causal_lm(config.compressor.backbone, key="compressor.backbone.model")
        shared = shares_base(config)
        gen_cfg = config.generator.backbone
        if config.compressor.read_lora is not None and not shared:
            raise ConfigError(
                f"key 'compressor.read_lora': the reading adapter lives on the compressor's base, so the generator "
                f"must be the same model (generator.backbone {spec_name(gen_cfg.model)!r} at {gen_cfg.precision}, "
                f"compressor.backbone {spec_name(config.compressor.backbone.model)!r} at "
                f"{config.compressor.backbone.precision})"
            )
        if shared:
            gen_model, gen_tokenizer = comp.model, comp.tokenizer
        else:
            gen = load_causal_lm(gen_cfg, key="generator.backbone.model")
            gen_model, gen_tokenizer = gen.model, gen.tokenizer
            self.generator_lm = gen_model  # registered so it follows the model's device
        self.compressor = Compressor(config.compressor, comp.model, comp.tokenizer, gen_model.get_input_embeddings())
        self.generator = Generator(
            self.compressor.lm if shared else gen_model,
            gen_tokenizer,
            shares_peft_base=shared,
            read_adapter="read" if config.compressor.read_lora is not None else None,
        )
        self.prompts = self.prompt_builder(config.generator.slot_format)

    @property
    def device(self) -> torch.device:
        return self.compressor.memory_slot.device

    def prompt_builder(self, slot_format: str) -> PromptBuilder:
        """Prompts in ``slot_format`` (`paper` or `compact`), with the configured system prompt and item budget."""
        gen = self.config.generator
        return PromptBuilder(
            self.generator.tokenizer, gen.system_prompt, slot_format, max_item_tokens=gen.max_item_tokens
        )

    # ----------------------------------------------------------------- memory side

    @torch.no_grad()
    def encode_items(self, items: Sequence[Evidence]) -> tuple[np.ndarray, np.ndarray]:
        """Evidence -> (keys [n, d], latents [n, H]) float32 through the compress adapter."""
        latents = self.compressor.encode_items(items)
        keys = self.compressor.keys(latents)
        return keys.cpu().numpy().astype(np.float32), latents.cpu().numpy().astype(np.float32)

    def item_costs(self, items: Sequence[Evidence], patch_tokens: int | None = None) -> list[ItemCost]:
        """Generator context tokens of each item as a latent, as raw text and (images) as a VLM's patch tokens:
        ``patch_tokens`` per image (None: this compressor's tower's patches)."""
        if patch_tokens is None and self.compressor.vision is not None:
            patch_tokens = self.compressor.vision.num_patches
        return item_costs(self.prompt_builder("paper"), items, patch_tokens)

    @torch.no_grad()
    def query_keys(self, questions: Sequence[str], batch_size: int = 16) -> torch.Tensor:
        """[n, d] retrieval keys of ``questions`` (query adapter); an empty question is refused."""
        for i, q in enumerate(questions):
            if not isinstance(q, str) or not q.strip():
                raise ConfigError(f"question {i + 1}: expected a non-empty question, got {q!r}")
        keys = []
        for start in range(0, len(questions), batch_size):
            chunk = list(questions[start : start + batch_size])
            keys.append(self.compressor.keys(self.compressor.encode_queries(chunk)))
        return torch.cat(keys) if keys else torch.zeros(0, self.config.compressor.key_dim)

    # ----------------------------------------------------------------- generator side

    @torch.no_grad()
    def answer_latents(
        self, questions: Sequence[str], latents: Sequence[torch.Tensor], slot_format: str | None = None
    ) -> tuple[list[str], list[Prompt]]:
        """Greedy answers of the generator reading each question's latents ([k_i, H] each) through the projector."""
        builder = self.prompt_builder(slot_format) if slot_format else self.prompts
        prompts = [builder.latent(q, int(z.shape[0])) for q, z in zip(questions, latents)]
        stacked = torch.cat([z.to(self.device) for z in latents]) if latents else None
        projected = self.compressor.project(stacked) if stacked is not None and len(stacked) else None
        texts = self.generator.answer(
            prompts, self.config.generator.max_new_tokens, projected, read=projected is not None
        )
        return texts, prompts

    @torch.no_grad()
    def answer_texts(
        self, questions: Sequence[str], contexts: Sequence[Sequence[str]]
    ) -> tuple[list[str], list[Prompt]]:
        """Greedy answers of the bare generator reading raw-text contexts (`Context i: text`; none: no retrieval)."""
        prompts = [self.prompts.text(q, list(ctx)) for q, ctx in zip(questions, contexts)]
        return self.generator.answer(prompts, self.config.generator.max_new_tokens), prompts
