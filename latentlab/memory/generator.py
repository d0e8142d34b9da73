"""The frozen generator: embeddings, hidden states at chosen positions, and batched greedy decoding.

When the generator is the compressor's own base model, it runs through the peft model with every adapter
disabled, so one copy of the weights serves both roles. A reading adapter (``compressor.read_lora``), when there
is one, is switched on only for prompts with latent slots (``read=True``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache

from latentlab.backbones import inner_model, input_embeddings, lm_head, make_adapters_trainable, use_adapter
from latentlab.memory.prompting import PackedPrompts, Prompt, pack_prompts


class Generator:
    """A frozen causal LM that reads prompts given as ``inputs_embeds``.

    A plain object, not a submodule: when it shares the compressor's base, registering it twice would
    duplicate the weights in state dicts; the owner registers a separate generator model itself.
    """

    def __init__(self, lm: nn.Module, tokenizer: Any, shares_peft_base: bool = False, read_adapter: str | None = None):
        if read_adapter is not None and not shares_peft_base:
            raise ValueError("a reading adapter lives on the compressor's peft model: the generator must share it")
        self.lm = lm
        self.tokenizer = tokenizer
        self.shares_peft_base = shares_peft_base
        self.read_adapter = read_adapter
        eos = {tokenizer.eos_token_id}
        for token in ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>"):
            token_id = tokenizer.convert_tokens_to_ids(token)
            if isinstance(token_id, int) and token_id != tokenizer.unk_token_id and token_id >= 0:
                eos.add(token_id)
        self.eos_ids = sorted(i for i in eos if i is not None)
        self._prefix_kv: dict[tuple, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    @contextlib.contextmanager
    def frozen_base(self) -> Iterator[None]:
        """Run the base weights with no adapter when they are shared with the compressor."""
        if self.shares_peft_base:
            try:
                with self.lm.disable_adapter():
                    yield
            finally:
                # peft re-enables only the active adapter's requires_grad on exit; a leaf whose flag is
                # off when backward runs silently gets no gradient, so restore every adapter.
                make_adapters_trainable(self.lm)
        else:
            yield

    @contextlib.contextmanager
    def weights(self, read: bool = False) -> Iterator[None]:
        """The bare base, or with ``read`` the reading adapter when there is one (latent prompts)."""
        if read and self.read_adapter is not None:
            use_adapter(self.lm, self.read_adapter)
            yield
        else:
            with self.frozen_base():
                yield

    @property
    def embed(self) -> nn.Module:
        return input_embeddings(self.lm)

    @property
    def embedding_size(self) -> int:
        return self.embed.weight.shape[1]

    @property
    def pad_id(self) -> int:
        """Padding token id for packed prompts (0 where the tokenizer has none)."""
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def prefix_cache(self, prefix_ids: tuple[int, ...], batch: int, read: bool = False) -> DynamicCache:
        """Keys and values of ``prefix_ids``, repeated for ``batch`` rows: computed once on the frozen base; through
        a reading adapter (which may be training) computed anew, one row, on every call."""
        device = self.embed.weight.device
        ids = torch.tensor([prefix_ids], dtype=torch.long, device=device)
        if read and self.read_adapter is not None:
            with self.weights(read=True):
                cache = inner_model(self.lm)(input_ids=ids, use_cache=True).cache
            layers = [(layer.keys, layer.values) for layer in cache.layers]
        else:
            key = (prefix_ids, str(device))
            if key not in self._prefix_kv:
                with torch.no_grad(), self.frozen_base():
                    cache = inner_model(self.lm)(input_ids=ids, use_cache=True).cache
                self._prefix_kv[key] = [(layer.keys, layer.values) for layer in cache.layers]
            layers = self._prefix_kv[key]
        return DynamicCache(
            ddp_cache_data=[(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in layers]
        )

    def continuation_logits(self, packed: PackedPrompts, read: bool = False) -> torch.Tensor:
        """Logits at the positions that predict the continuation tokens only: [N, V] (no full-sequence vocab).

        A shared prefix split off by ``pack_prompts(split_prefix=True)`` is read from its keys and values
        (``prefix_cache``). ``read``: through the reading adapter, if any (prompts with latent slots).
        """
        mask, past = packed.attention_mask, None
        if packed.prefix_ids:
            batch = mask.shape[0]
            past = self.prefix_cache(packed.prefix_ids, batch, read=read)
            mask = torch.cat([mask.new_ones(batch, len(packed.prefix_ids)), mask], dim=1)
        with self.weights(read=read):
            hidden = inner_model(self.lm)(
                inputs_embeds=packed.inputs_embeds,
                attention_mask=mask,
                position_ids=packed.position_ids,
                cache=past,
                use_cache=past is not None,
            ).last_hidden_state
            return lm_head(self.lm)(hidden[packed.continuation_mask])

    @torch.no_grad()
    def greedy(self, packed: PackedPrompts, max_new_tokens: int, read: bool = False) -> list[list[int]]:
        """Greedy decoding with the KV cache from left-padded prompts; stops each row at EOS. ``read``: through the
        reading adapter, if any."""
        if packed.prefix_ids:
            raise ValueError("greedy decoding takes left-padded prompts packed without split_prefix")
        mask = packed.attention_mask
        batch = mask.shape[0]
        eos = torch.tensor(self.eos_ids, device=mask.device)
        finished = torch.zeros(batch, dtype=torch.bool, device=mask.device)
        outputs: list[torch.Tensor] = []
        positions = packed.position_ids
        embeds = packed.inputs_embeds
        past = None
        with self.weights(read=read):
            for _ in range(max_new_tokens):
                out = self.lm(
                    inputs_embeds=embeds,
                    attention_mask=mask,
                    position_ids=positions,
                    cache=past,
                    use_cache=True,
                    logits_to_keep=1,
                )
                past = out.cache
                next_ids = out.logits[:, -1].argmax(dim=-1)
                next_ids = torch.where(finished, torch.full_like(next_ids, self.eos_ids[0]), next_ids)
                outputs.append(next_ids)
                finished |= torch.isin(next_ids, eos)
                if bool(finished.all()):
                    break
                embeds = self.embed(next_ids).unsqueeze(1)
                positions = positions[:, -1:] + 1
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        tokens = torch.stack(outputs, dim=1).tolist() if outputs else [[] for _ in range(batch)]
        eos_set = set(self.eos_ids)
        trimmed = []
        for row in tokens:
            cut = next((i for i, t in enumerate(row) if t in eos_set), None)
            trimmed.append(row if cut is None else row[: cut + 1])
        return trimmed

    def answer(
        self, prompts: list[Prompt], max_new_tokens: int, latents: torch.Tensor | None = None, read: bool = False
    ) -> list[str]:
        """Greedy answers as text for ``prompts``, left-padded, latent slots filled from ``latents`` ([S, G])."""
        with torch.no_grad():
            packed = pack_prompts(prompts, self.embed, latents, padding_side="left", pad_id=self.pad_id)
            return self.decode(self.greedy(packed, max_new_tokens, read=read))

    def decode(self, token_rows: list[list[int]]) -> list[str]:
        return [self.tokenizer.decode(row, skip_special_tokens=True).strip() for row in token_rows]
