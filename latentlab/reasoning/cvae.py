"""ATP-Latent's conditional VAE over latent reasoning steps: posterior, prior, step decoder and the ELBO.

Pure loss functions on tensors plus small modules; ``LatentStepCVAE`` wires them into ``thought_forward``'s hook.

Shapes: B batch, n thought slots, c = thoughts per step, K = n / c steps, Z latent dim, H reasoner hidden size,
L step length in tokens, V vocabulary size.

Loss scale (one convention, stated once): a step's reconstruction NLL is the *sum* of token NLLs of the step text
plus its EOS, and its KL is the *sum* over the latent dims and its c slots, so ``recon + kl`` is the negative ELBO of
that step in nats and beta = 1 is the true bound. ``elbo_loss`` then averages over steps. (The reference averages the
KL over 2048 dims, which makes its beta = 0.001 about 2e6 times smaller than it looks.)

Two priors, by config:

| ``prior``         | posterior q(z_i | .)          | KL against        | z at inference (``inference``)   |
|-------------------|-------------------------------|-------------------|----------------------------------|
| learned           | context h_i and step-text enc | p(z_i | h_i) MLP  | prior mean or sample             |
| standard_normal   | context h_i only              | N(0, I)           | posterior mean or sample         |

``standard_normal`` is what the ATP-Latent code does (its encoder never sees the step text, so it can run at test
time); ``learned`` is the paper's conditional form, where only the prior is available at test time. Taking the mean
at inference makes evaluation deterministic (the reference always samples, even at eval).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from latentlab.configs.reasoning import CVAEConfig  # noqa: F401 - re-exported beside the modules it configures
from latentlab.errors import ConfigError

LOGVAR_MIN, LOGVAR_MAX = -10.0, 10.0
"""log-variances are clamped so exp() stays finite early in training (sigma in [0.007, 148])."""


# ---------------------------------------------------------------- pure functions


def gaussian_kl(mu_q: Tensor, logvar_q: Tensor, mu_p: Tensor | float = 0.0, logvar_p: Tensor | float = 0.0) -> Tensor:
    """KL(N(mu_q, var_q) || N(mu_p, var_p)) of diagonal Gaussians, summed over the last (latent) dim.

    mu_q, logvar_q: [..., Z]; mu_p, logvar_p broadcast to them (0, 0 = standard normal) -> kl: [...].
    Per dim: 0.5 * (logvar_p - logvar_q + (var_q + (mu_q - mu_p)^2) / var_p - 1).
    """
    mu_p = torch.as_tensor(mu_p, dtype=mu_q.dtype, device=mu_q.device)
    logvar_p = torch.as_tensor(logvar_p, dtype=mu_q.dtype, device=mu_q.device)
    per_dim = 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p).pow(2)) * torch.exp(-logvar_p) - 1.0)
    return per_dim.sum(dim=-1)


def elbo_loss(recon_nll: Tensor, kl: Tensor, beta: float, mask: Tensor | None = None) -> Tensor:
    """Negative ELBO averaged over items: mean(recon_nll + beta * kl).

    recon_nll, kl: [...] per step (see the module docstring for their scale); mask: [...] 1 on steps that count.
    """
    per_item = recon_nll + beta * kl
    if mask is None:
        return per_item.mean()
    mask = mask.to(per_item.dtype)
    return (per_item * mask).sum() / mask.sum().clamp(min=1.0)


def beta_schedule(step: int, beta: float, warmup_steps: int) -> float:
    """KL weight at optimizer ``step``: linear from 0 at step 0 to ``beta`` at ``warmup_steps``, then constant."""
    if warmup_steps <= 0:
        return beta
    return beta * min(1.0, max(step, 0) / warmup_steps)


def reparameterize(mu: Tensor, logvar: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """z = mu + sigma * eps, eps ~ N(0, I): a sample that gradients flow through. [..., Z] -> [..., Z]."""
    eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + torch.exp(0.5 * logvar) * eps


def stop_targets(counts: Tensor, n_slots: int, per_step: int) -> tuple[Tensor, Tensor]:
    """Targets of the stop head at each step start t = 0, c, 2c, ... < n (ATP-Latent's variable length).

    counts: [B] thought slots each row uses -> (targets [B, G], valid [B, G]) with G = ceil(n / c). A decision at
    t is "stop" (1) when t >= count, "continue" (0) otherwise; only decisions up to the first stop count (valid),
    since inference never asks again once a row has stopped. A row that uses every slot has no stop target.
    """
    starts = torch.arange(0, n_slots, per_step, device=counts.device)  # [G]
    targets = (starts[None, :] >= counts[:, None]).long()
    valid = starts[None, :] <= counts[:, None]
    return targets, valid


def stop_loss(logits: Tensor, targets: Tensor, valid: Tensor) -> Tensor:
    """Mean cross-entropy of the stop head over valid decisions. logits [B, G, 2], targets/valid [B, G] -> scalar."""
    per_item = F.cross_entropy(rearrange(logits, "b g k -> (b g) k").float(), targets.reshape(-1), reduction="none")
    mask = valid.reshape(-1).to(per_item.dtype)
    return (per_item * mask).sum() / mask.sum().clamp(min=1.0)


# ---------------------------------------------------------------- modules


class _GaussianHead(nn.Module):
    """MLP -> (mu, logvar), both [..., Z]."""

    def __init__(self, in_dim: int, mlp_dim: int, latent_dim: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, mlp_dim), nn.GELU(), nn.LayerNorm(mlp_dim), nn.Linear(mlp_dim, 2 * latent_dim)
        )

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.net(features).chunk(2, dim=-1)
        return mu, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)


class StepPosterior(nn.Module):
    """q(z_i | h_i, step text): context hidden [B, H] and optional text encoding [B, E] -> (mu, logvar) [B, Z]."""

    def __init__(self, hidden_size: int, latent_dim: int, text_dim: int | None, mlp_dim: int = 256):
        super().__init__()
        self.text_dim = text_dim
        self.head = _GaussianHead(hidden_size + (text_dim or 0), mlp_dim, latent_dim)

    def forward(self, context: Tensor, text: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if (text is None) != (self.text_dim is None):
            raise ValueError(f"StepPosterior built with text_dim={self.text_dim} got text={text is not None}")
        features = context if text is None else torch.cat([context, text], dim=-1)
        return self.head(features)


class StepPrior(nn.Module):
    """p(z_i | h_i): a learned MLP of the context [B, H], or N(0, I) -> (mu, logvar) [B, Z]."""

    def __init__(
        self, hidden_size: int, latent_dim: int, kind: Literal["learned", "standard_normal"], mlp_dim: int = 256
    ):
        super().__init__()
        if kind not in ("learned", "standard_normal"):
            raise ConfigError(f"cvae.prior must be 'learned' or 'standard_normal', got {kind!r}")
        self.kind = kind
        self.latent_dim = latent_dim
        self.head = _GaussianHead(hidden_size, mlp_dim, latent_dim) if kind == "learned" else None

    def forward(self, context: Tensor) -> tuple[Tensor, Tensor]:
        if self.head is None:
            zeros = context.new_zeros(*context.shape[:-1], self.latent_dim)
            return zeros, zeros
        return self.head(context)


def _last_valid(outputs: Tensor, lengths: Tensor) -> Tensor:
    """outputs [N, L, D], lengths [N] -> [N, D] the output at position length-1 (zeros for empty sequences)."""
    index = (lengths - 1).clamp(min=0)
    picked = outputs[torch.arange(outputs.shape[0], device=outputs.device), index]
    return picked * (lengths > 0).unsqueeze(-1).to(picked.dtype)


class StepTextEncoder(nn.Module):
    """Encodes a step's tokens for the posterior: embedding + GRU, last state. ids [N, L], lengths [N] -> [N, E].

    A GRU keeps the order that a mean of embeddings would lose (``<<3*4=12>>`` vs ``<<4*12=3>>``).
    """

    def __init__(self, vocab_size: int, embed_dim: int, text_dim: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.rnn = nn.GRU(embed_dim, text_dim, batch_first=True)

    def forward(self, ids: Tensor, lengths: Tensor) -> Tensor:
        outputs, _ = self.rnn(self.embed(ids))  # [N, L, E]; causal, so pads after a step do not change it
        return _last_valid(outputs, lengths)


class StepDecoder(nn.Module):
    """Rebuilds a step's text from its c latents: a small GRU language model over the reasoner's vocabulary.

    Why not a second copy of the reasoner (ATP-Latent decodes with a full Llama-1B): the decoder runs for every step
    of every rollout in the coherence reward, so its cost must not scale with the reasoner; and a weak decoder cannot
    model the step text without z, which keeps the latent informative (strong autoregressive decoders learn to
    ignore z, i.e. posterior collapse). z initialises the GRU state and is also concatenated to every input token.
    """

    def __init__(
        self, vocab_size: int, latent_dim: int, latents_per_step: int, embed_dim: int = 128, hidden_dim: int = 256
    ):
        super().__init__()
        cond_dim = latent_dim * latents_per_step
        self.latents_per_step = latents_per_step
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.start = nn.Parameter(torch.zeros(embed_dim))
        self.init_state = nn.Linear(cond_dim, hidden_dim)
        self.rnn = nn.GRU(embed_dim + cond_dim, hidden_dim, batch_first=True)
        self.out = nn.Linear(hidden_dim, vocab_size)

    def _condition(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """z [N, c, Z] -> (cond [N, c*Z], initial GRU state [1, N, D])."""
        if z.shape[-2] != self.latents_per_step:
            raise ValueError(
                f"StepDecoder expects {self.latents_per_step} latents per step, got z of shape {tuple(z.shape)}"
            )
        cond = rearrange(z, "n c z -> n (c z)")
        return cond, torch.tanh(self.init_state(cond)).unsqueeze(0)

    def _run(self, tokens_embedded: Tensor, cond: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        cond_steps = cond.unsqueeze(1).expand(-1, tokens_embedded.shape[1], -1)
        outputs, state = self.rnn(torch.cat([tokens_embedded, cond_steps], dim=-1), state)
        return self.out(outputs), state  # [N, T, V]

    def nll(self, z: Tensor, step_ids: Tensor, lengths: Tensor, eos_id: int) -> Tensor:
        """Teacher-forced NLL of each step text followed by EOS, summed over its tokens.

        z: [N, c, Z], step_ids: [N, L] (right-padded), lengths: [N] (0 = an empty step, target EOS only) -> [N].
        """
        n, width = step_ids.shape
        positions = torch.arange(width + 1, device=step_ids.device)
        targets = torch.cat([step_ids, step_ids.new_full((n, 1), eos_id)], dim=1)  # [N, L+1]
        targets = torch.where(positions[None, :] == lengths[:, None], torch.full_like(targets, eos_id), targets)
        valid = positions[None, :] <= lengths[:, None]  # step tokens and the EOS after them
        cond, state = self._condition(z)
        inputs = torch.cat([self.start.expand(n, 1, -1), self.embed(targets[:, :-1])], dim=1)  # [N, L+1, E]
        logits, _ = self._run(inputs, cond, state)
        token_nll = F.cross_entropy(
            rearrange(logits, "n t v -> (n t) v").float(), targets.reshape(-1), reduction="none"
        )
        return (token_nll.view(n, width + 1) * valid).sum(dim=1)

    @torch.no_grad()
    def greedy(self, z: Tensor, eos_id: int, max_len: int) -> list[list[int]]:
        """Greedy step texts for z [N, c, Z]: token ids up to and excluding EOS, at most ``max_len`` each."""
        n = z.shape[0]
        cond, state = self._condition(z)
        current = self.start.expand(n, 1, -1)
        tokens = torch.full((n, max_len), eos_id, dtype=torch.long, device=z.device)
        finished = torch.zeros(n, dtype=torch.bool, device=z.device)
        for index in range(max_len):
            logits, state = self._run(current, cond, state)
            token = torch.where(finished, torch.full_like(finished, eos_id, dtype=torch.long), logits[:, -1].argmax(-1))
            tokens[:, index] = token
            finished |= token == eos_id
            if bool(finished.all()):
                break
            current = self.embed(token).unsqueeze(1)
        rows = tokens.tolist()
        return [row[: row.index(eos_id)] if eos_id in row else row for row in rows]


def decode_steps(
    decoder: StepDecoder, z: Tensor, eos_id: int, max_len: int = 32, tokenizer=None
) -> list[list[int]] | list[str] | list[list[list[int]]] | list[list[str]]:
    """Greedy step texts from latents: z [N, c, Z] -> N steps, or z [B, K, c, Z] -> B lists of K steps.

    Returns token ids, or strings when a ``tokenizer`` is given (special tokens skipped).
    """
    if z.dim() not in (3, 4):
        raise ValueError(f"decode_steps expects z [N, c, Z] or [B, K, c, Z], got shape {tuple(z.shape)}")
    flat = z if z.dim() == 3 else rearrange(z, "b k c d -> (b k) c d")
    steps: list = decoder.greedy(flat, eos_id, max_len)
    if tokenizer is not None:
        steps = tokenizer.batch_decode(steps, skip_special_tokens=True)
    if z.dim() == 4:
        per_row = z.shape[1]
        steps = [steps[i : i + per_row] for i in range(0, len(steps), per_row)]
    return steps


# ---------------------------------------------------------------- composite


@dataclass
class LatentTrace:
    """What a CVAE thought hook recorded, one entry per thought slot; ``stack`` gives [B, n, Z] tensors."""

    z: list[Tensor] = field(default_factory=list)
    mu_q: list[Tensor] = field(default_factory=list)
    logvar_q: list[Tensor] = field(default_factory=list)
    mu_p: list[Tensor] = field(default_factory=list)
    logvar_p: list[Tensor] = field(default_factory=list)

    @staticmethod
    def stack(items: list[Tensor]) -> Tensor:
        return torch.stack(items, dim=1)


class LatentStepCVAE(nn.Module):
    """Posterior, prior, step encoder/decoder and the z -> thought map, used through ``thought_forward``'s hook.

    Training: ``fn, trace = cvae.training_hook(text)``; ``thought_forward(model, batch, thought_fn=fn)``; then
    ``cvae.step_losses(trace, step_ids, lengths, eos_id)``. Inference: ``fn, trace = cvae.inference_hook()`` for
    ``generate_with_thoughts``, then ``decode_steps(cvae.decoder, cvae.group(trace.stack(trace.z)), eos_id)``.
    """

    def __init__(self, config: CVAEConfig, hidden_size: int, vocab_size: int):
        super().__init__()
        self.config = config
        text_dim = config.text_dim if config.prior == "learned" else None
        self.text_encoder = StepTextEncoder(vocab_size, config.text_embed_dim, config.text_dim) if text_dim else None
        self.posterior = StepPosterior(hidden_size, config.latent_dim, text_dim, config.mlp_dim)
        self.prior = StepPrior(hidden_size, config.latent_dim, config.prior, config.mlp_dim)
        self.decoder = StepDecoder(
            vocab_size, config.latent_dim, config.thoughts_per_step, config.decoder_embed_dim, config.decoder_hidden_dim
        )
        self.to_thought = nn.Linear(config.latent_dim, hidden_size)
        self.stop = (
            nn.Sequential(nn.Linear(config.latent_dim, config.mlp_dim), nn.GELU(), nn.Linear(config.mlp_dim, 2))
            if config.stop_head
            else None
        )
        """Stop head (ATP-Latent's STOPPolicy, reading z): logit 1 = stop thinking before this step."""

    def encode_steps(self, step_ids: Tensor, lengths: Tensor) -> Tensor | None:
        """step_ids [B, K, L], lengths [B, K] -> text encodings [B, K, E] (None when the posterior ignores text)."""
        if self.text_encoder is None:
            return None
        b = step_ids.shape[0]
        flat = self.text_encoder(rearrange(step_ids, "b k l -> (b k) l"), lengths.reshape(-1))
        return rearrange(flat, "(b k) e -> b k e", b=b)

    def group(self, per_slot: Tensor) -> Tensor:
        """[B, n, Z] per thought slot -> [B, K, c, Z] per step."""
        return rearrange(per_slot, "b (k c) z -> b k c z", c=self.config.thoughts_per_step)

    def training_hook(self, step_text: Tensor | None, generator: torch.Generator | None = None):
        """A ``thought_fn`` that samples z from the posterior at each slot, and the trace it fills.

        step_text: [B, K, E] from ``encode_steps`` (None under ``standard_normal``); slot t reads step t // c.
        Masked thought slots (``mask_unused_thoughts``) are sampled too: leave their steps out with ``elbo_loss``'s mask.
        """
        trace = LatentTrace()

        def thought_fn(index: int, hidden: Tensor) -> Tensor:
            text = None if step_text is None else step_text[:, index // self.config.thoughts_per_step]
            mu_q, logvar_q = self.posterior(hidden, text)
            mu_p, logvar_p = self.prior(hidden)
            z = reparameterize(mu_q, logvar_q, generator)
            for name, value in zip(("z", "mu_q", "logvar_q", "mu_p", "logvar_p"), (z, mu_q, logvar_q, mu_p, logvar_p)):
                getattr(trace, name).append(value)
            return self.to_thought(z).to(hidden.dtype)

        return thought_fn, trace

    def inference_hook(self, generator: torch.Generator | None = None):
        """A ``thought_fn`` choosing z without step text (see the module table), and the trace of chosen z."""
        trace = LatentTrace()

        def thought_fn(index: int, hidden: Tensor) -> Tensor:
            mu, logvar = self.text_free_distribution(hidden)
            z = mu if self.config.inference == "mean" else reparameterize(mu, logvar, generator)
            trace.z.append(z)
            return self.to_thought(z).to(hidden.dtype)

        return thought_fn, trace

    def text_free_distribution(self, hidden: Tensor) -> tuple[Tensor, Tensor]:
        """(mu, logvar) [B, Z] of z from the context hidden [B, H] alone (see the module table): what inference and
        RL sample (the prior under ``prior: learned``, the text-free posterior under ``standard_normal``)."""
        source = self.prior if self.config.prior == "learned" else self.posterior
        return source(hidden)

    def stop_logits(self, z: Tensor) -> Tensor:
        """z [B, n, Z] per slot -> stop logits [B, G, 2] at the step starts (slots 0, c, 2c, ...)."""
        if self.stop is None:
            raise ConfigError("this CVAE has no stop head (cvae.stop_head: false)")
        return self.stop(z[:, :: self.config.thoughts_per_step])

    def stop_hook(self, trace: LatentTrace):
        """A ``stop_fn`` for ``generate_from_ids``: at each step start, argmax of the stop head on the z just chosen
        (``trace`` is the inference hook's); never stops inside a step."""

        def stop_fn(index: int) -> Tensor:
            z = trace.z[-1]
            if index % self.config.thoughts_per_step:
                return torch.zeros(z.shape[0], dtype=torch.bool, device=z.device)
            return self.stop(z).argmax(dim=-1) == 1

        return stop_fn

    def step_losses(self, trace: LatentTrace, step_ids: Tensor, lengths: Tensor, eos_id: int) -> tuple[Tensor, Tensor]:
        """Per-step reconstruction NLL and KL (sums, see the module docstring).

        step_ids [B, K, L], lengths [B, K] (0 = a padding step whose target is EOS only) -> (recon [B, K], kl [B, K]).
        """
        z = self.group(LatentTrace.stack(trace.z))  # [B, K, c, Z]
        b, k = z.shape[:2]
        recon = self.decoder.nll(
            rearrange(z, "b k c z -> (b k) c z"), rearrange(step_ids, "b k l -> (b k) l"), lengths.reshape(-1), eos_id
        )
        kl_slot = gaussian_kl(
            *(LatentTrace.stack(getattr(trace, name)) for name in ("mu_q", "logvar_q", "mu_p", "logvar_p"))
        )  # [B, n]
        kl = rearrange(kl_slot, "b (k c) -> b k c", c=self.config.thoughts_per_step).sum(dim=-1)
        return recon.view(b, k), kl
