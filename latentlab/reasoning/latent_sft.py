"""Latent-SFT thoughts: each thought is a superposition of K vocabulary embeddings, fed until ``<eot>``.

After a hidden state h the reasoner's LM head gives logits over the vocabulary; the thought fed next is
``sum_i softmax(top-K logits)_i * E[id_i]`` over the input-embedding matrix E (detached, as Latent-SFT's
``softmax_over_embedding_topk``), a point in the convex hull of K token embeddings (spec §3). Thinking ends at the
first slot whose preceding hidden state's argmax token is ``<eot>``: that slot is not fed, ``<eot>`` is, and ordinary
decoding follows. The exit is taken from the un-noised logits, so it carries no sampling noise (Latent-GRPO's rule).

Training (``method: latent_sft``) runs Coconut's curriculum with these thoughts in place of the raw hidden states and
puts loss on ``<eot>`` (``curriculum.supervise_eot``), so the last thought's output learns to end thinking, and on
*not* predicting ``<eot>`` before every slot a row uses (``stay_loss``, weight ``latent_sft.exit_weight``), so a
chain that ended after k thoughts at stage k learns to go on at stage k + 1; the gradient reaches the reasoner
through the softmax weights.

``GumbelMixturePolicy`` is the stochastic thought of RL rollouts and sampled answers, Latent-GRPO's
(latent_rl_spec.md §1). At a latent slot with hidden state h:

1. log p = log_softmax(head(h)) at T = 1; keep the top-p nucleus, never fewer than K tokens (the rest -inf);
2. g ~ Gumbel(0, 1) per vocabulary entry, clamped to [lo, hi]; one-sided noise shifts it by -lo (so g >= 0), then
   ``noise_scale`` multiplies it;
3. the scores y = log p + g; the thought is the mixture of the top-K ids of y with weights softmax(y / tau_g);
4. where the *un-noised* argmax is ``<eot>`` the chain ends at this slot (the exit carries no noise: what would be
   fed there is the un-noised top-K mixture); that slot is masked by ``stop_fn``, but its record is still the noisy
   (ids, y), as the reference stores it, and it counts in the loss (``Rollouts.action_mask``). That matters: a
   correct chain's exit slot is the only place where its ``<eot>`` (a top candidate there) is pushed up. With the
   exit slot left out (or recorded un-noised, so d = 0 and no gradient), only failing chains moved ``<eot>``, down
   at their last latent slot, and the tiny runs drifted to longer chains that answered worse (3.5 -> 4 latents,
   training reward 0.38 -> 0.30 in 150 batches).

The record per slot is (ids, y). The training log-density of a slot (``log_prob``) rebuilds nothing: the fed thought
is replayed as recorded (detached); it recovers d_i = y_i - log p_i at the recorded ids under the *current* logits
(full vocabulary, T = 1, no clamp, no nucleus) and returns the mean standard-Gumbel log-density (1/K) sum_i
(-d_i - exp(-d_i)). Its derivative with respect to log p_i is (1 - exp(-d_i)) / K, with the sign of d_i: with
one-sided noise every d_i >= 0 at rollout time, so a positive advantage raises every mixed candidate and a negative
one lowers them all; two-sided noise would push candidates that drew negative noise against the advantage.

The sign-preserving flip (``flip_negative``): for a row with A <= 0 (``sample["flip"]`` True) and d_i < 0, the value
is kept and the gradient is that of the density at -d_i, whose size 1 - e^{-|d|} is bounded (e^{|d|} - 1 is not).

Departures from the reference code: the end-of-latent id comes from the tokenizer (the reference hard-codes 524);
the nucleus and the noise are drawn from the rollout's seeded generator, so a rollout is reproducible.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from latentlab.configs.reasoning import GumbelThoughtsConfig
from latentlab.errors import ConfigError
from latentlab.reasoning.replay import ThoughtDraw
from latentlab.reasoning.sampling import filter_logits, gumbel_noise
from latentlab.reasoning.thoughts import _causal_lm


def mixture_thought(embedding: Tensor, ids: Tensor, scores: Tensor, temperature: float = 1.0) -> Tensor:
    """sum_i softmax(scores / temperature)_i * embedding[ids_i]: ids, scores [B, K] -> [B, H] (embedding detached)."""
    if temperature <= 0:
        raise ConfigError(f"mixture temperature must be > 0, got {temperature}")
    weights = (scores.float() / temperature).softmax(dim=-1)  # [B, K]
    rows = embedding.detach()[ids]  # [B, K, H]
    return torch.einsum("bk,bkh->bh", weights.to(rows.dtype), rows)


class VocabMixtureThoughts:
    """The thought and stop hooks of a Latent-SFT reasoner (``thought_fn`` / ``stop_fn`` of ``generate_from_ids``).

    ``thought_fn(index, hidden)`` feeds the top-``topk`` superposition of ``head(hidden)`` and notes which rows'
    argmax is ``eot_id``; ``stop_fn(index)`` (called right after it by ``CachedStepper.run_thoughts``) returns those
    rows, so they stop at that slot. Training passes only ``thought_fn`` (the layout fixes the thought count).
    """

    def __init__(self, model: nn.Module, topk: int, eot_id: int):
        lm = _causal_lm(model)
        self.head = lm.get_output_embeddings()
        self.embedding = lm.get_input_embeddings().weight
        if not 1 <= topk <= self.embedding.shape[0]:
            raise ConfigError(f"latent_sft.topk must be in 1..{self.embedding.shape[0]} (the vocabulary), got {topk}")
        self.topk, self.eot_id = topk, eot_id
        self.exiting: Tensor | None = None

    def logits(self, hidden: Tensor) -> Tensor:
        """[B, H] -> [B, V] float32 LM-head logits (T = 1)."""
        return self.head(hidden).float()

    def thought_fn(self, index: int, hidden: Tensor) -> Tensor:
        logits = self.logits(hidden)
        self.exiting = logits.argmax(dim=-1) == self.eot_id
        top = logits.topk(self.topk, dim=-1)
        return mixture_thought(self.embedding, top.indices, top.values).to(hidden.dtype)

    def noisy_thought_fn(self, config: GumbelThoughtsConfig, generator: torch.Generator | None):
        """A ``thought_fn`` that feeds the Gumbel-perturbed mixture of ``config`` (the noise, nucleus and temperature
        of Latent-GRPO's rollouts) and notes the un-noised exits; differentiable through the clean log-probs."""

        def thought_fn(index: int, hidden: Tensor) -> Tensor:
            logp = self.logits(hidden).log_softmax(dim=-1)
            self.exiting = logp.argmax(dim=-1) == self.eot_id
            kept = nucleus_at_least_k(logp, config.top_p, self.topk)
            top = (kept + gumbel_thought_noise(logp.shape, generator, logp.device, config)).topk(self.topk, dim=-1)
            return mixture_thought(self.embedding, top.indices, top.values, config.gumbel_temperature).to(hidden.dtype)

        return thought_fn

    def stay_loss(self, contexts: Tensor, thought_mask: Tensor) -> Tensor:
        """Mean over the used slots of -log(1 - p(<eot> | the hidden state before the slot)): contexts [B, n, H]
        (``ThoughtOutput.thought_contexts``), thought_mask [B, n]. The chain must not end before a slot it uses."""
        logp_eot = self.logits(contexts).log_softmax(dim=-1)[..., self.eot_id]  # [B, n]
        stay = torch.log1p(-logp_eot.exp().clamp(max=1 - 1e-6))
        used = thought_mask.to(stay.dtype)
        return -(stay * used).sum() / used.sum().clamp(min=1)

    def stop_fn(self, index: int) -> Tensor:
        if self.exiting is None:
            raise ConfigError("VocabMixtureThoughts.stop_fn ran before thought_fn at this slot")
        return self.exiting


def step_label_targets(step_ids: Tensor, step_lengths: Tensor, thoughts_per_group: int) -> tuple[Tensor, Tensor]:
    """The tokens each thought slot is labelled with: ``step_ids`` [B, G, L] / ``step_lengths`` [B, G] (``CoTBatch``:
    the text of each thought group) -> (ids, mask) [B, G * c, L].

    Group g's tokens are cut into c = ``thoughts_per_group`` contiguous chunks, the first ones a token longer when L
    does not divide (``torch.tensor_split``); slot g * c + j is labelled with chunk j. A slot whose chunk is empty
    (a short step, or a group past the latent steps) has an all-False mask row and no label.
    """
    if thoughts_per_group < 1:
        raise ConfigError(f"thoughts_per_group must be >= 1, got {thoughts_per_group}")
    B, G, L = step_ids.shape
    c = thoughts_per_group
    ids = torch.zeros(B, G * c, L, dtype=torch.long, device=step_ids.device)
    mask = torch.zeros(B, G * c, L, dtype=torch.bool, device=step_ids.device)
    for b in range(B):
        for g in range(G):
            tokens = step_ids[b, g, : int(step_lengths[b, g])]
            for j, chunk in enumerate(torch.tensor_split(tokens, c)):
                ids[b, g * c + j, : len(chunk)] = chunk
                mask[b, g * c + j, : len(chunk)] = True
    return ids, mask


def step_label_loss(logp: Tensor, label_ids: Tensor, label_mask: Tensor, thought_mask: Tensor) -> Tensor:
    """Mean over the labelled used slots of -mean_t log p(t) over the slot's label tokens t: the cross-entropy of the
    slot's distribution against its chunk's tokens as a bag (each token at its count / chunk length).

    logp [B, n, V] (the log-softmax that makes each thought), label_ids / label_mask [B, n, L]
    (``step_label_targets``), thought_mask [B, n]. 0 when no used slot has a label.
    """
    n = min(logp.shape[1], label_ids.shape[1])
    logp, label_ids, label_mask = logp[:, :n], label_ids[:, :n], label_mask[:, :n]
    picked = logp.gather(-1, label_ids)  # [B, n, L]
    counts = label_mask.sum(dim=-1)  # [B, n]
    per_slot = -(picked * label_mask).sum(dim=-1) / counts.clamp(min=1)
    labelled = (counts > 0) & thought_mask[:, :n].bool()
    return (per_slot * labelled).sum() / labelled.sum().clamp(min=1)


def gumbel_log_density(d: Tensor) -> Tensor:
    """log of the standard Gumbel density at d: -d - exp(-d) (elementwise)."""
    return -d - torch.exp(-d)


def soft_token_log_density(d: Tensor, flip: Tensor | None = None) -> Tensor:
    """Mean over the last dim (the K candidates) of ``gumbel_log_density(d)``: d [B, K] -> [B].

    ``flip`` [B] bool: rows whose negative entries take their gradient at -d (value unchanged; the flip above).
    """
    density = gumbel_log_density(d)
    if flip is not None and bool(flip.any()):
        flipped = flip[:, None] & (d < 0)
        mirrored = gumbel_log_density(-d)
        # forward: density; backward: through mirrored where flipped
        straight_through = mirrored - mirrored.detach() + density.detach()
        density = torch.where(flipped, straight_through, density)
    return density.mean(dim=-1)


def gumbel_thought_noise(shape: torch.Size, generator: torch.Generator | None, device, config: GumbelThoughtsConfig):
    """The clamped (and, one-sided, shifted) Gumbel noise times ``noise_scale``, float32."""
    g = gumbel_noise(shape, generator, device).clamp(config.clamp_low, config.clamp_high)
    if config.noise == "one_sided":
        g = g - config.clamp_low
    return g * config.noise_scale


def nucleus_at_least_k(logp: Tensor, top_p: float, k: int) -> Tensor:
    """``logp`` [B, V] with entries outside the top-p nucleus set to -inf, but never fewer than the K largest kept."""
    if top_p >= 1.0:
        return logp
    nucleus = torch.isfinite(filter_logits(logp, 0, top_p))
    kth = logp.topk(k, dim=-1).values[..., -1:]
    return logp.masked_fill(~(nucleus | (logp >= kth)), float("-inf"))


class GumbelMixturePolicy:
    """Latent-GRPO's thought policy on a Latent-SFT reasoner; also the ``stop_fn`` that ends chains at ``<eot>``.

    Use ``recording_thoughts(policy, generator)`` in the rollout with ``stop_fn=policy.stop_fn``, and
    ``replaying_thoughts(policy, recorded)`` in the training forward (see ``latentlab.rl.rollout.latent_rollout``).
    """

    def __init__(self, model: nn.Module, topk: int, eot_id: int, config: GumbelThoughtsConfig):
        self.thoughts = VocabMixtureThoughts(model, topk, eot_id)
        self.config = config
        self.topk, self.eot_id = topk, eot_id

    def noise(self, shape: torch.Size, generator: torch.Generator | None, device) -> Tensor:
        return gumbel_thought_noise(shape, generator, device, self.config)

    def draw(self, index: int, hidden: Tensor, generator: torch.Generator | None) -> ThoughtDraw:
        logits = self.thoughts.logits(hidden)  # [B, V] float32, T = 1
        logp = logits.log_softmax(dim=-1)
        exiting = logits.argmax(dim=-1) == self.eot_id
        self.thoughts.exiting = exiting
        kept = nucleus_at_least_k(logp, self.config.top_p, self.topk)
        noisy = kept + self.noise(logp.shape, generator, logp.device)
        top = noisy.topk(self.topk, dim=-1)
        clean = logp.topk(self.topk, dim=-1)
        tau = self.config.gumbel_temperature
        fed = torch.where(
            exiting[:, None],
            mixture_thought(self.thoughts.embedding, clean.indices, clean.values, tau),
            mixture_thought(self.thoughts.embedding, top.indices, top.values, tau),
        )
        d = top.values - logp.gather(-1, top.indices)
        return ThoughtDraw(fed.to(hidden.dtype), soft_token_log_density(d), {"ids": top.indices, "scores": top.values})

    def log_prob(self, index: int, hidden: Tensor, fed: Tensor, sample: dict[str, Tensor]) -> Tensor:
        if "ids" not in sample or "scores" not in sample:
            raise ConfigError("GumbelMixturePolicy.log_prob needs the recorded 'ids' and 'scores' of each slot")
        logp = self.thoughts.logits(hidden).log_softmax(dim=-1)
        d = sample["scores"].float() - logp.gather(-1, sample["ids"])
        flip = sample.get("flip") if self.config.flip_negative else None
        return soft_token_log_density(d, None if flip is None else flip.bool())

    def stop_fn(self, index: int) -> Tensor:
        """Rows whose un-noised argmax at this slot's hidden state is ``<eot>`` (set by ``draw``)."""
        return self.thoughts.stop_fn(index)
