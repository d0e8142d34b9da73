"""SofT-GRPO's soft-thinking tokens as a ``ThoughtPolicy``: Gumbel-softmax mixtures of the top-k vocabulary
embeddings, drawn in rollouts and scored again in training by the reparameterised density (latent_rl_spec.md §2).

Rollout (``draw``), at a thinking slot with LM-head logits l (float32) and T = ``config.temperature``:

1. p = softmax(l / T), renormalised over its top-k, then over the top-p nucleus of that, then min-p (when > 0):
   the K = top_k ids with their probabilities renormalised, p~ (a candidate the filters dropped keeps its id, p~ = 0);
2. g ~ Gumbel(0, 1), one per candidate, from the rollout's generator, clamped to [clamp_low, clamp_high];
3. scores y_i = log(p~_i + 1e-6) + noise_factor * g_i; weights w = softmax(y / tau_g); the thought fed is
   sum_i w_i E[id_i] (``mixture_thought``, E the input embeddings, detached);
4. the candidates are sorted by w, so ``ids[:, 0]`` is the recorded token (SofT-GRPO's "token id" of a soft step).
   The record per slot is ``{"ids": [B, K], "scores": y [B, K]}``.

Exit: thinking ends at the slot whose recorded token is ``end_id`` (``stop_fn`` returns those rows, set by ``draw``).
As in SofT-GRPO, that choice is the top-*noisy*-weight id, so the exit is sampled (Latent-GRPO instead exits on the
un-noised argmax). ``CachedStepper.run_thoughts`` masks that slot and every later one; the caller feeds ``end_id`` as
the hard token after the thoughts (``eot_id``), as SofT-GRPO turns the exit step into a one-hot ``</think>`` record.

Training (``log_prob``, on the recomputed hidden state, with gradients):

- p^_i = softmax(l / T)[id_i] / sum_j softmax(l / T)[id_j] over the recorded ids (no top-p; = softmax of the K
  logits); g^_i = clamp(y_i - log(p^_i + 1e-6), clamp_low, clamp_high);
- log pi = mean over {i : log(p^_i + 1e-6) > min_logp} of (-g^_i - exp(-g^_i)) (``soft_thinking_log_density``).
  A row where no candidate passes the mask averages over all K (the reference divides by zero there; with the
  defaults it cannot happen for K <= 20, since the largest p^ is >= 1/K > e^-3).
- The clamp is the reference's and it cuts gradients: a candidate whose recovered noise lies outside
  [clamp_low, clamp_high] adds a constant and no gradient. Spec §5.2: the rollout applied top-p and the training
  renormalisation does not, so the recovered noise of a filtered candidate (y = log 1e-6 + g) is far below
  clamp_low and is re-clamped there; Latent-GRPO does not clamp at all.
- The exit slot (recorded token ``end_id``) is scored like SofT-GRPO's one-hot exit record: the discrete
  log softmax(l / T)[end_id]. ``latent_rollout``'s thought mask leaves that slot out, so today it counts only if the
  caller adds it to the mask.

``draw``'s ``logp`` is this training density on the rollout's hidden state, so mu equals pi_old before any update
(the first ratio is 1, spec §5.3).

Departures from the reference code (``sampler.py`` and ``logprobs_from_logits_topk_gumbel``), and why:

- the end-of-thinking id is the first token of ``config.end_text`` under the tokenizer (``end_of_thinking_id``); the
  reference encodes ``</think>`` and takes the last token. For latentlab's CoT format the end text is the answer
  marker, and the model generates the rest of it;
- the noise comes from the rollout's seeded ``torch.Generator``, not the global RNG, so a rollout repeats;
- the K candidates are the top-k of the tempered logits, and the filters run on those K logits only. The reference
  takes ``torch.topk`` of the filtered full-vocabulary probabilities, so the ids of dropped candidates are arbitrary
  ties among zeros (usually unlikely tokens, masked in training by min_logp). Here they are the next tokens of the
  top-k, so they can pass the mask, and then add the constant density at clamp_low to the mean. Top-k ties at the
  k-th logit keep exactly K candidates;
- ``draw`` records the training density, not the sampler's ``log_prob_noise_topk`` (the true noise g, masked on p~).
  The reference's trainer recomputes pi_old with the training function anyway, and recording that makes mu = pi_old;
- the reference's entropy-based early stop is off by default there and not implemented here; an optional ``flip``
  in the record (``recompute_latent``'s) is ignored: SofT-GRPO has no sign-preserving flip.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from latentlab.configs.soft_thinking import SoftThinkingConfig
from latentlab.errors import ConfigError
from latentlab.reasoning.latent_sft import gumbel_log_density, mixture_thought
from latentlab.reasoning.replay import ThoughtDraw
from latentlab.reasoning.sampling import filter_logits, gumbel_noise
from latentlab.reasoning.thoughts import _causal_lm

__all__ = [
    "PROB_EPS",
    "SoftThinkingPolicy",
    "end_of_thinking_id",
    "renormalised_log_probs",
    "soft_thinking_log_density",
    "thinking_completion_ids",
]

PROB_EPS = 1e-6
"""Added to a probability before its log, at rollout (log(p~ + eps)) and in training (log(p^ + eps)), as the
reference does: a candidate with p~ = 0 gets a finite score."""


def end_of_thinking_id(tokenizer, end_text: str) -> int:
    """The first token id of ``end_text`` (no special tokens added): the recorded token that ends thinking."""
    ids = tokenizer(end_text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ConfigError(
            f"soft_thinking.end_text {end_text!r} encodes to no tokens under this tokenizer; name text whose first "
            "token ends thinking (latentlab's CoT format: the answer marker '###')"
        )
    return int(ids[0])


def renormalised_log_probs(candidate_logits: Tensor) -> Tensor:
    """log(p^ + eps) with p^ = softmax(l)[ids] / sum_j softmax(l)[id_j] = softmax of the K candidate logits.

    candidate_logits: [B, K] (tempered logits at the recorded ids) -> [B, K] float32.
    """
    return (candidate_logits.float().softmax(dim=-1) + PROB_EPS).log()


def soft_thinking_log_density(
    log_p_hat: Tensor, scores: Tensor, clamp_low: float, clamp_high: float, min_logp: float
) -> Tensor:
    """SofT-GRPO's training log-density of a soft token: log_p_hat, scores [B, K] -> [B].

    The recovered noise g^ = clamp(scores - log_p_hat, clamp_low, clamp_high); the result is the mean of the
    standard-Gumbel log-density -g^ - exp(-g^) over the candidates with log_p_hat > min_logp, or over all K in a row
    where none passes. Its derivative with respect to log_p_hat_i is (1 - exp(-g^_i)) / n_counted inside the clamp
    and 0 outside it (the clamp is the reference's, so it cuts those gradients).
    """
    noise = (scores.float() - log_p_hat).clamp(clamp_low, clamp_high)
    density = gumbel_log_density(noise)
    counted = log_p_hat > min_logp
    counted = counted | ~counted.any(dim=-1, keepdim=True)  # an all-masked row counts every candidate
    return torch.where(counted, density, 0.0).sum(dim=-1) / counted.sum(dim=-1)


def thinking_completion_ids(thought_ids: Tensor, thought_mask: Tensor, end_id: int, token_ids) -> list[list[int]]:
    """Each row's whole completion as token ids: the recorded tokens of its used thinking slots, ``end_id`` (fed
    after the thoughts, also when ``max_thinking`` forced the end), then its generated tokens.

    thought_ids: [N, n, K] (``Rollouts.thoughts.sample["ids"]``), thought_mask: [N, n], token_ids: N lists (up to
    EOS). Decode it for the reward, so the answer extraction sees the end-of-thinking marker.
    """
    recorded = thought_ids[..., 0].tolist()
    used = thought_mask.bool().tolist()
    return [
        [tok for tok, keep in zip(row, mask) if keep] + [end_id] + list(tokens)
        for row, mask, tokens in zip(recorded, used, token_ids)
    ]


class SoftThinkingPolicy:
    """SofT-GRPO's soft-thinking thought policy on a causal LM, and the ``stop_fn`` that ends thinking at ``end_id``.

    Use ``latent_rollout(model, prompts, G, policy, n_slots=config.max_thinking, eot_id=end_id, ...)`` and
    ``recompute_latent(model, policy, rollouts, ...)`` (``latentlab.rl.rollout``); see the module docstring.
    """

    def __init__(self, model: nn.Module, config: SoftThinkingConfig, end_id: int):
        lm = _causal_lm(model)
        self.head = lm.get_output_embeddings()
        self.embedding = lm.get_input_embeddings().weight
        vocab = self.embedding.shape[0]
        if config.top_k > vocab:
            raise ConfigError(f"soft_thinking.top_k must be in 1..{vocab} (the vocabulary), got {config.top_k}")
        if not 0 <= end_id < vocab:
            raise ConfigError(f"the end-of-thinking id {end_id} is outside the vocabulary (0..{vocab - 1})")
        self.config, self.end_id = config, end_id
        self.exiting: Tensor | None = None

    def logits(self, hidden: Tensor) -> Tensor:
        """[B, H] -> [B, V] float32 LM-head logits divided by the thinking temperature."""
        return self.head(hidden).float() / self.config.temperature

    def candidates(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """Tempered logits [B, V] -> (ids [B, K] by descending logit, p~ [B, K]: top-k, top-p and min-p renormalised;
        0 where a filter dropped the candidate)."""
        c = self.config
        top = logits.topk(c.top_k, dim=-1)
        # the K logits alone are the top-k renormalised distribution; top-p then keeps a prefix of them
        probs = filter_logits(top.values, 0, c.top_p).softmax(dim=-1)
        if c.min_p > 0:
            probs = probs.masked_fill(probs < c.min_p * probs.amax(dim=-1, keepdim=True), 0.0)
            probs = probs / probs.sum(dim=-1, keepdim=True)
        return top.indices, probs

    def density(self, logits: Tensor, ids: Tensor, scores: Tensor) -> Tensor:
        """The training log-density [B] of records (ids, scores [B, K]) under tempered logits [B, V]; an exit record
        (``ids[:, 0] == end_id``) gets the discrete log-prob of ``end_id``."""
        c = self.config
        log_p_hat = renormalised_log_probs(logits.gather(-1, ids))
        soft = soft_thinking_log_density(log_p_hat, scores, c.clamp_low, c.clamp_high, c.min_logp)
        exit_logp = logits.log_softmax(dim=-1)[:, self.end_id]
        return torch.where(ids[:, 0] == self.end_id, exit_logp, soft)

    def draw(self, index: int, hidden: Tensor, generator: torch.Generator | None) -> ThoughtDraw:
        c = self.config
        logits = self.logits(hidden)
        ids, probs = self.candidates(logits)
        noise = gumbel_noise(ids.shape, generator, logits.device).clamp(c.clamp_low, c.clamp_high)
        scores = (probs + PROB_EPS).log() + c.noise_factor * noise
        # softmax(y / tau_g) is monotone in y: sorting by y sorts by weight, so ids[:, 0] is the recorded token
        scores, order = scores.sort(dim=-1, descending=True)
        ids = ids.gather(-1, order)
        self.exiting = ids[:, 0] == self.end_id
        fed = mixture_thought(self.embedding, ids, scores, c.gumbel_temperature)
        return ThoughtDraw(fed.to(hidden.dtype), self.density(logits, ids, scores), {"ids": ids, "scores": scores})

    def log_prob(self, index: int, hidden: Tensor, fed: Tensor, sample: dict[str, Tensor]) -> Tensor:
        if "ids" not in sample or "scores" not in sample:
            raise ConfigError("SoftThinkingPolicy.log_prob needs the recorded 'ids' and 'scores' of each slot")
        return self.density(self.logits(hidden), sample["ids"].long(), sample["scores"].float())

    def stop_fn(self, index: int) -> Tensor:
        """Rows whose recorded (top-noisy-weight) token at this slot is ``end_id`` (set by ``draw``)."""
        if self.exiting is None:
            raise ConfigError("SoftThinkingPolicy.stop_fn ran before draw at this slot")
        return self.exiting
