"""ATP-Latent's RL reward: the coherence of the steps the frozen decoder reads back from the latents (spec
latent_reasoning §2.3, §5.5). The policy (the Gaussian latent and the stop head) is
``latentlab.reasoning.atp_policy``.

Shapes: B rows, n thought slots, c = thoughts per step (``cvae.config.thoughts_per_step``), Z latent dim, H reasoner
hidden size.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from einops import rearrange
from torch import Tensor

from latentlab.errors import DataError
from latentlab.eval.metrics import answers_match
from latentlab.reasoning.curriculum import extract_answer
from latentlab.reasoning.cvae import LatentStepCVAE, decode_steps
from latentlab.rl.rewards import REWARDS, _column

__all__ = [
    "coherence",
    "coherence_reward",
    "decode_latent_steps",
    "step_result",
]


# ---------------------------------------------------------------- decoding the latents into steps


def decode_latent_steps(
    cvae: LatentStepCVAE, z: Tensor, n_used: Tensor, eos_id: int, tokenizer, max_len: int = 16
) -> list[list[str]]:
    """The step texts the frozen decoder reads from each row's used latents, greedy, at most ``max_len`` tokens.

    z: [B, n, Z] per slot; n_used: [B] slots each row used (``thought_mask.sum(1)``) -> B lists of n_used // c texts
    (a partial last step is dropped, as the reference's floor). One batched ``decode_steps`` call for all rows.
    """
    b, n = z.shape[:2]
    c = cvae.config.thoughts_per_step
    n_used = torch.as_tensor(n_used, device=z.device).long()
    if n_used.shape != (b,) or bool(((n_used < 0) | (n_used > n)).any()):
        raise DataError(f"n_used must be [{b}] counts in [0, {n}] (the slots each row used), got {n_used.tolist()}")
    steps = n // c
    grouped = rearrange(z[:, : steps * c], "b (k c) d -> b k c d", c=c)
    used = n_used // c  # [B]
    keep = torch.arange(steps, device=z.device)[None, :] < used[:, None]  # [B, K]
    texts: list[str] = []
    if bool(keep.any()):
        with torch.no_grad():
            texts = decode_steps(cvae.decoder, grouped[keep].detach(), eos_id, max_len, tokenizer)
    rows, start = [], 0
    for count in used.tolist():
        rows.append(list(texts[start : start + count]))
        start += count
    return rows


# ---------------------------------------------------------------- coherence


def step_result(step_text: str) -> str | None:
    """The result of a decoded step: the text after its last "=", up to ">>" or the end, stripped.

    ``"<<3*4=12>>" -> "12"``, ``"3*4=12" -> "12"``, ``"<<3*4=12" -> "12"`` (truncated); None when the step has no
    "=" or nothing after it (``"<<3*4=>>"``).
    """
    _, sep, tail = step_text.rpartition("=")
    result = tail.split(">>", 1)[0].strip() if sep else ""
    return result or None


def _mentions(text: str, result: str) -> bool:
    """``result`` occurs in ``text`` as a whole token: not inside a longer word or number ("2" is not in "12",
    "5" not in "0.5", "12" not in "12.5"); a sign or operator before it is fine ("3" is in "5-3")."""
    return re.search(rf"(?<![\w.]){re.escape(result)}(?!\w|\.\d)", text) is not None


def coherence(decoded_steps: Sequence[str], answer: str) -> float:
    """ATP-Latent's coherence of decoded steps: the fraction of steps whose result is used later.

    A step i < last counts when its result occurs in some later step; the last step counts when its result occurs
    in the predicted ``answer`` (or equals it as a number: "34" and "34.0"). 1.0 when there are no steps, as the
    reference. Departures from the reference, on purpose: a step without a result (``step_result`` None) never
    counts, where the reference's empty result is a substring of everything; and results match as whole tokens
    (``_mentions``), where the reference's plain substring test lets "2" match "<<3*4=12>>".
    """
    if not decoded_steps:
        return 1.0
    results = [step_result(step) for step in decoded_steps]
    matched = 0
    for i, result in enumerate(results[:-1]):
        matched += result is not None and any(_mentions(later, result) for later in decoded_steps[i + 1 :])
    last = results[-1]
    matched += last is not None and (_mentions(answer, last) or answers_match(last, answer))
    return matched / len(decoded_steps)


@REWARDS.register("coherence")
def coherence_reward(prompts: list[str], completions: list[str], **columns: Any) -> list[float | None]:
    """``coherence`` of the column ``decoded_steps`` (one list of step texts per completion, from
    ``decode_latent_steps``) against the completion's answer (``extract_answer``, after the last "###").

    The reference's 0.1 * coherence * acc term is ``reward.gates: {coherence: answer}`` with weight 0.1.
    """
    n = len(completions)
    decoded = _column(columns, "decoded_steps", "coherence", n)
    scores: list[float | None] = []
    for i, (completion, steps) in enumerate(zip(completions, decoded)):
        if not isinstance(steps, (list, tuple)) or not all(isinstance(step, str) for step in steps):
            raise DataError(f"decoded_steps[{i}] is {steps!r}; expected a list of step texts")
        scores.append(coherence(steps, extract_answer(completion)))
    return scores
