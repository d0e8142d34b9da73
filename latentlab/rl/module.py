"""GRPOModule: the LightningModule of `task: latent_rl`: GRPO on the discrete tokens of a CoT / no-CoT reasoner,
Latent-GRPO on the Gumbel thoughts of a Latent-SFT reasoner, SofT-GRPO on the soft-thinking tokens of a CoT one,
ATP-Latent RL on the Gaussian latents and stop decisions of an ATP-Latent one.

It wires the pure pieces together (manual optimisation): one training batch = ``rl.prompts_per_step`` questions,

1. roll out G = ``advantage.group_size`` completions each (``rollout.rollout``, no grad, ``rl.rollout_precision``),
   recording mu; score them (``rewards.score``, gold answers column ``answer``). With ``advantage.dynamic_sampling``
   (DAPO) the data batch holds ``max_draws`` chunks of questions and ``advantages.fill_batch`` rolls them out one
   chunk at a time, keeping the informative groups until ``prompts_per_step`` are kept or the chunks run out (a
   short batch trains on what it has, an empty one skips its update); off, it draws the one chunk and keeps all.
   Advantages (``advantages.group_advantages`` with the scorable mask) are of the kept groups;
2. recompute pi_old (no grad, ``rl.train_precision``) and, with ``rl.reference``, the frozen reference's log-probs;
3. ``rl.update_epochs`` passes over shuffled minibatches of whole groups: recompute pi with gradient,
   ``policy_loss(pi, mu, A, mask, old_logp=pi_old)``, backward, clip to ``trainer.gradient_clip_val``, step.

mu is the rollout's ``tempered_logprobs`` (log_softmax(logits / T) of the chosen token, no top-k / top-p), which is
what the teacher-forced recompute scores (TRL's and verl's convention; equal to the sampling density when top_k and
top_p are off). DPPO's top-K divergences (``policy_loss.divergence`` topk_tv / topk_kl) compare the rollout's
recorded top-``policy_loss.topk_logprobs`` list with pi at the same ids; that list is of the distribution mu sampled
from, so with top_k / top_p on it holds ``-inf`` beyond the kept tokens (probability 0 in the divergence) while pi
is the unfiltered tempered recompute.

Every optimizer step whose gradient norm is not finite is skipped and counted; with fp16 training the loss is scaled
dynamically (GradScaler's rule: halve on a skip, double after ``rl.loss_scale_growth_interval`` finite steps) and the
scaler's state is saved in checkpoints. ``trainer.max_steps`` counts optimizer steps taken.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

from latentlab.configs import ExperimentConfig
from latentlab.eval.metrics import answers_match
from latentlab.io import write_jsonl
from latentlab.optim import TRAIN_STREAM, VAL_STREAM, adamw_warmup_cosine, derive_seed
from latentlab.reasoning.atp_policy import ATPLatentPolicy
from latentlab.reasoning.module import LatentCoTModule
from latentlab.reasoning.replay import ThoughtPolicy
from latentlab.reasoning.soft_thinking import thinking_completion_ids
from latentlab.rl.advantages import FillInfo, GenerationBatch, fill_batch, first_token_selection, group_advantages
from latentlab.rl.atp import decode_latent_steps
from latentlab.rl.policy_loss import check_policy_loss_config, policy_loss
from latentlab.rl.rewards import REWARDS, Scores, score
from latentlab.rl.rollout import (
    Recomputed,
    Rollouts,
    concat_rollouts,
    latent_rollout,
    mismatch,
    recompute_latent,
    recompute_with_topk,
    rollout,
    select_rows,
)

log = logging.getLogger(__name__)

AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
COMPLETIONS_FILE = "completions.jsonl"


class LossScaler:
    """Dynamic loss scaling (torch GradScaler's rule) for fp16 training; a fixed scale of 1 when disabled."""

    def __init__(self, enabled: bool, init_scale: float, growth_interval: int):
        self.enabled, self.growth_interval = enabled, growth_interval
        self.scale = float(init_scale) if enabled else 1.0
        self.good_steps = 0

    def update(self, finite: bool) -> None:
        if not self.enabled:
            return
        if not finite:
            self.scale, self.good_steps = self.scale / 2.0, 0
            return
        self.good_steps += 1
        if self.good_steps >= self.growth_interval:
            self.scale, self.good_steps = self.scale * 2.0, 0

    def state_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "good_steps": self.good_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scale, self.good_steps = float(state["scale"]), int(state["good_steps"])


def autocast(device: torch.device, precision: str):
    """Autocast to bf16 / fp16 on ``device``; fp32 is no autocast."""
    if precision not in AUTOCAST:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AUTOCAST[precision])


class GRPOModule(L.LightningModule):
    """The policy (a ``LatentCoTModule``, so evaluation is latent_cot's), an optional frozen reference, GRPO steps."""

    def __init__(self, config: ExperimentConfig):
        super().__init__()
        self.automatic_optimization = False
        self.config = config
        self.objective = check_policy_loss_config(config.policy_loss)
        for name in config.reward.weights:
            REWARDS.get(name, where="reward.weights")
        self.policy = LatentCoTModule(config)
        self.reference: torch.nn.Module | None = None
        rl = config.rl
        self.scaler = LossScaler(rl.train_precision == "fp16", rl.loss_scale_init, rl.loss_scale_growth_interval)
        self.skipped_steps = 0
        """Optimizer steps skipped because the gradient norm was not finite (saved in checkpoints)."""
        self.rollout_steps = 0
        """Training batches rolled out so far (saved in checkpoints; sets the completion-log cadence)."""
        self.topk_logprobs = config.policy_loss.topk
        """K of mu's top-K list the rollouts record for DPPO's top-K divergences; 0 = none (every other loss)."""
        self.soft = config.soft_thinking is not None
        """SofT-GRPO: rollouts write the reasoning in soft-thinking tokens, then the answer in language tokens."""
        self.atp = config.reasoning.method == "atp_latent"
        """ATP-Latent RL: rollouts draw the CVAE's Gaussian latents and stop decisions."""
        self.latent = config.reasoning.method == "latent_sft" or self.soft or self.atp
        """Rollouts draw thoughts (``thought_policy``) before the language tokens: Latent-GRPO, SofT-GRPO or
        ATP-Latent RL."""

    def thought_policy(self, model: torch.nn.Module) -> ThoughtPolicy:
        """The thought policy on ``model`` (the policy's reasoner, or the frozen reference): SofT-GRPO's soft-thinking
        tokens, or Latent-GRPO's Gumbel thoughts."""
        if self.atp:  # the CVAE heads are the policy's own (latent_rl refuses a reference for atp_latent)
            return ATPLatentPolicy(self.policy.cvae)
        return self.policy.soft_policy(model) if self.soft else self.policy.gumbel_thoughts(model)

    # ----------------------------------------------------------------- weights

    def load_reasoner_from(self, source: str | Path) -> None:
        """Start from a latent_cot run's reasoner (``reasoning.init_from``; atp_latent: and its CVAE)."""
        self.policy.load_reasoner_from(source)
        if self.atp:
            self.policy.load_cvae_from(source)

    def make_reference(self) -> None:
        """A frozen copy of the policy's reasoner as it is now (``rl.reference``); not saved in checkpoints."""
        self.reference = copy.deepcopy(self.policy.reasoner).requires_grad_(False).eval()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.startswith("reference.")]:
            del state[key]  # rebuilt from reasoning.init_from at build time
        checkpoint["latent_rl"] = {
            "scaler": self.scaler.state_dict(),
            "skipped_steps": self.skipped_steps,
            "rollout_steps": self.rollout_steps,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.reference is not None:  # the reference is not in the file: keep the one built from init_from
            state = checkpoint.setdefault("state_dict", {})
            state.update({f"reference.{k}": v for k, v in self.reference.state_dict().items()})
        saved = checkpoint.get("latent_rl", {})
        if "scaler" in saved:
            self.scaler.load_state_dict(saved["scaler"])
        self.skipped_steps = int(saved.get("skipped_steps", 0))
        self.rollout_steps = int(saved.get("rollout_steps", 0))

    # ----------------------------------------------------------------- rollouts

    def prompt_ids(self, questions: list[str]) -> list[list[int]]:
        """The questions as the SFT reasoner answers them: at stage 0 for cot / no_cot (no thoughts, no markers),
        ending in ``<bot>`` for latent_sft (its thoughts follow)."""
        return [ids for ids, _ in self.policy.prompts_at(questions, self.config.reasoning.final_stage)]

    def _recompute(
        self,
        model: torch.nn.Module,
        rollouts: Rollouts,
        prompts,
        precision: str,
        with_topk: bool = False,
        flip: Tensor | None = None,
    ) -> Recomputed:
        """log pi of the chosen tokens and, ``with_topk``, at the rollout's top-K ids (one forward for both).

        Latent rollouts: [N, n + T], the thoughts' log-densities (slots first, 0 where unused) then the tokens';
        ``flip`` [N] marks the rows with A <= 0 (the thought policy's sign-preserving flip).
        """
        if rollouts.thoughts is not None:
            with autocast(self.device, precision):
                out = recompute_latent(
                    model, self.thought_policy(model), rollouts, prompts, self.config.sampling.temperature, flip
                )
            return Recomputed(torch.cat([out.thought_logp, out.token_logp], dim=1).float(), None)
        topk_ids = rollouts.top_ids if with_topk else None
        with autocast(self.device, precision):
            out = recompute_with_topk(model, rollouts, prompts, self.config.sampling.temperature, topk_ids=topk_ids)
        return Recomputed(out.logp.float(), None if out.topk_logp is None else out.topk_logp.float())

    def _recompute_all(self, model: torch.nn.Module, rolled: Rollouts, prompts, precision: str) -> Tensor:
        """Log-probs of every row, no grad, in minibatch-sized chunks of whole groups (as the update sees them)."""
        G, n = rolled.group_size, rolled.completion_ids.shape[0]
        size = self.config.rl.minibatch_size or n
        chunks = []
        with torch.no_grad():
            for rows in torch.arange(n).split(size):
                groups = prompts[int(rows[0]) // G : int(rows[-1]) // G + 1]
                chunks.append(self._recompute(model, select_rows(rolled, rows), groups, precision).logp)
        return torch.cat(chunks)

    def _draw(self, questions: list[str], answers: list[str], generator: torch.Generator) -> dict[str, Any]:
        """Roll out and score one chunk of ``questions`` (one draw of dynamic sampling), detached."""
        cfg, G = self.config, self.config.advantage.group_size
        prompts = self.prompt_ids(questions)
        sampling = {
            "max_new_tokens": cfg.sampling.max_new_tokens,
            "eos_id": self.policy.vocab.eos_id,
            "pad_id": self.policy.pad_id,
            "temperature": cfg.sampling.temperature,
            "top_k": cfg.sampling.top_k,
            "top_p": cfg.sampling.top_p,
            "generator": generator,
        }
        with torch.no_grad(), autocast(self.device, cfg.rl.rollout_precision):
            if self.latent:
                reasoner = self.policy.reasoner
                policy = self.thought_policy(reasoner)
                rolled = latent_rollout(
                    reasoner,
                    prompts,
                    G,
                    policy,
                    n_slots=self.policy.thought_slots(cfg.reasoning.final_stage),
                    eot_id=policy.end_id if self.soft else self.policy.thought_tokens.eot_id,
                    **sampling,
                )
            else:
                rolled = rollout(self.policy.reasoner, prompts, G, top_k_logprobs=self.topk_logprobs, **sampling)
        completions = rolled.token_ids
        if self.soft:  # the reward reads the whole text: the thinking block's recorded tokens, its end, the answer
            completions = thinking_completion_ids(
                rolled.thoughts.sample["ids"], rolled.thought_mask, rolled.eot_id, rolled.token_ids
            )
        texts = self.policy.tokenizer.batch_decode(completions, skip_special_tokens=True)
        row_questions = [q for q in questions for _ in range(G)]
        golds = [str(a) for a in answers for _ in range(G)]
        columns = {"answer": golds, "completion_lengths": rolled.completion_lengths}
        if "coherence" in cfg.reward.weights:  # ATP-Latent: the steps the frozen decoder reads from the latents
            columns["decoded_steps"] = decode_latent_steps(
                self.policy.cvae,
                rolled.thoughts.sample["z"],
                rolled.thought_mask.sum(dim=1),
                self.policy.vocab.eos_id,
                self.policy.tokenizer,
            )
        scores = score(row_questions, texts, cfg.reward, **columns)
        scores = scores._replace(valid=self._valid(scores.valid, rolled))
        return {
            "rollouts": rolled,
            "prompts": prompts,
            "questions": row_questions,
            "golds": golds,
            "texts": texts,
            "scores": scores,
        }

    def _valid(self, scorable: Tensor, rolled: Rollouts) -> Tensor:
        """Which rollouts count in their group (``advantage.invalid_samples``); the others get A = 0."""
        reasons = self.config.advantage.invalid_samples
        valid = scorable.clone() if "unparsable" in reasons else torch.ones_like(scorable)
        if "truncated" in reasons:
            valid &= ~rolled.truncated.cpu()
        if "no_exit" in reasons and rolled.exited is not None:  # latent rollouts only
            valid &= rolled.exited.cpu()
        return valid

    def _sequence(self, rolled: Rollouts) -> tuple[Tensor, Tensor]:
        """(mu, mask) [N, L] of the actions the loss sees: the thought slots first (latent rollouts: the used ones and
        the exit slot, ``Rollouts.action_mask``), then the tokens."""
        mu, mask = rolled.tempered_logprobs.to(self.device), rolled.mask.to(self.device)
        if rolled.thoughts is None:
            return mu, mask
        acted = rolled.action_mask.to(self.device)  # the used slots and the exit slot
        mu_thoughts = torch.where(acted, rolled.thoughts.logp.to(self.device).float(), 0.0)
        return torch.cat([mu_thoughts, mu], dim=1), torch.cat([acted, mask.bool()], dim=1)

    def _rollout(self, questions: list[str], answers: list[str]) -> tuple[dict[str, Any] | None, FillInfo]:
        """Roll out chunks of ``rl.prompts_per_step`` questions through ``fill_batch`` (dynamic sampling, or one draw
        kept whole), then advantages and pi_old (and the reference's log-probs) of the kept groups; None when no
        group is kept.

        One generator, seeded by the rollout step, serves the draws in turn: the first draw is the same with dynamic
        sampling on or off, and each later draw continues the stream, so every draw differs and a rerun repeats it.
        """
        cfg, k, G = self.config, self.config.rl.prompts_per_step, self.config.advantage.group_size
        generator = torch.Generator(device=self.device).manual_seed(
            derive_seed(cfg.seed, TRAIN_STREAM, self.rollout_steps)
        )
        chunks = [slice(start, start + k) for start in range(0, len(questions), k)]
        draws: list[dict[str, Any]] = []

        def draw() -> GenerationBatch:
            part = chunks[len(draws)]
            first = sum(d["rollouts"].num_prompts for d in draws)  # group ids run on across the draws
            drawn = self._draw(questions[part], answers[part], generator)
            draws.append(drawn)
            scores = drawn["scores"]
            return GenerationBatch(scores.total, range(first, first + drawn["rollouts"].num_prompts), scores.valid)

        advantage = dataclasses.replace(cfg.advantage, max_draws=min(cfg.advantage.max_draws, len(chunks)))
        filled, info = fill_batch(draw, k, advantage)
        if not filled.payload:
            return None, info
        data = _keep_groups(draws, torch.tensor(filled.payload), G)
        scores, rolled, prompts = data["scores"], data["rollouts"], data["prompts"]
        data["row_advantages"] = group_advantages(scores.total, cfg.advantage, scores.valid).to(self.device)
        data["old_logp"] = self._recompute_all(self.policy.reasoner, rolled, prompts, cfg.rl.train_precision)
        data["advantages"] = data["row_advantages"]
        if cfg.advantage.first_token_selection:
            _, mask = self._sequence(rolled)
            data["advantages"] = first_token_selection(data["row_advantages"], data["old_logp"], mask, G)
        data["ref_logp"] = None
        if self.reference is not None:
            data["ref_logp"] = self._recompute_all(self.reference, rolled, prompts, cfg.rl.train_precision)
        return data, info

    # ----------------------------------------------------------------- the update

    def _minibatches(self, n_rows: int) -> list[Tensor]:
        """Shuffled minibatches of whole groups (row indices), seeded by the rollout step."""
        G = self.config.advantage.group_size
        size = self.config.rl.minibatch_size or n_rows
        generator = torch.Generator().manual_seed(derive_seed(self.config.seed, VAL_STREAM, self.rollout_steps))
        groups = torch.randperm(n_rows // G, generator=generator)
        rows = (groups[:, None] * G + torch.arange(G)).flatten()
        return list(rows.split(size))

    def _optimizer_step(self, loss: Tensor) -> dict[str, float]:
        """Backward (scaled), unscale, skip a non-finite gradient norm, clip, step; returns what happened."""
        optimizer = self.optimizers()
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss * self.scaler.scale)
        params = [p for p in self.policy.parameters() if p.grad is not None]
        if self.scaler.scale != 1.0:
            for p in params:
                p.grad.div_(self.scaler.scale)
        norm = float(torch.nn.utils.clip_grad_norm_(params, float("inf"))) if params else 0.0
        finite = math.isfinite(norm)
        self.scaler.update(finite)
        if not finite:
            optimizer.zero_grad(set_to_none=True)
            self.skipped_steps += 1
            return {"grad_norm": norm, "stepped": 0.0}
        clip = self.config.trainer.gradient_clip_val
        if clip > 0:
            self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm="norm")
        optimizer.step()
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()
        return {"grad_norm": norm, "stepped": 1.0}

    def training_step(self, batch: dict[str, list[str]], batch_idx: int) -> None:
        """One rollout batch (``PromptDataModule``: questions and answers) and its update epochs."""
        cfg = self.config
        self.policy.eval()  # no dropout: the rollout, pi_old and the update score the same function
        data, fill = self._rollout(batch["questions"], batch["answers"])
        if data is None:  # dynamic sampling found no informative group in any draw: nothing to learn from
            log.info("rollout batch %d: no informative group in %d draws, no update", self.rollout_steps, fill.draws)
            self._log_fill(fill, {"steps_taken": 0.0, "skipped_steps": float(self.skipped_steps)})
            self.rollout_steps += 1
            return
        rolled: Rollouts = data["rollouts"]
        mu, mask = self._sequence(rolled)
        with_topk = self.topk_logprobs > 0
        mu_topk = rolled.top_logprobs.to(self.device) if with_topk else None
        stats: dict[str, list[float]] = {}
        for _ in range(cfg.rl.update_epochs):
            for rows in self._minibatches(mask.shape[0]):
                rows_d = rows.to(self.device)
                sub = select_rows(rolled, rows)
                prompts = [data["prompts"][int(r) // rolled.group_size] for r in rows[:: rolled.group_size]]
                # the sign-preserving flip is Latent-GRPO's (SofT-GRPO and ATP-Latent have none)
                flip = data["row_advantages"][rows_d] <= 0 if cfg.reasoning.method == "latent_sft" else None
                logp, pi_topk = self._recompute(
                    self.policy.reasoner, sub, prompts, cfg.rl.train_precision, with_topk, flip
                )
                ref = data["ref_logp"]
                out = policy_loss(
                    logp,
                    mu[rows_d],
                    data["advantages"][rows_d],
                    mask[rows_d],
                    cfg.policy_loss,
                    old_logp=data["old_logp"][rows_d],
                    ref_logp=None if ref is None else ref[rows_d],
                    mu_topk_logp=None if mu_topk is None else mu_topk[rows_d],
                    pi_topk_logp=None if pi_topk is None else pi_topk.detach(),  # the divergence only reads it
                )
                step = self._optimizer_step(out.loss)
                values = {"loss": float(out.loss.detach()), **step}
                values.update({k: float(v) for k, v in out.diagnostics.items()})
                if ref is not None and "kl_ref" not in values:  # a reference but no KL in the loss: still watch it
                    kl = torch.exp(ref[rows_d] - logp.detach()) - (ref[rows_d] - logp.detach()) - 1
                    values["kl_ref"] = float((kl * mask[rows_d]).sum() / mask[rows_d].sum().clamp(min=1))
                for name, value in values.items():
                    stats.setdefault(name, []).append(value)
        self._log_step(data, mu, mask, stats)
        if cfg.advantage.dynamic_sampling:
            self._log_fill(fill, {})
        if cfg.rl.log_completions_every and self.rollout_steps % cfg.rl.log_completions_every == 0:
            self._write_completions(data)
        self.rollout_steps += 1

    def _log_step(self, data: dict, mu: Tensor, mask: Tensor, stats: dict[str, list[float]]) -> None:
        rolled, scores = data["rollouts"], data["scores"]
        n = mask.shape[0]
        answer = REWARDS.get("answer")(
            data["questions"], data["texts"], answer=data["golds"], reward_config=self.config.reward
        )
        gap = mismatch(mu, data["old_logp"], mask)
        logged = {
            "reward_mean": float(scores.total.mean()),
            "reward_std": float(scores.total.std()) if n > 1 else 0.0,
            "accuracy": sum(float(a == 1.0) for a in answer) / n,
            "entropy_proxy": float(-(mu * mask).sum() / mask.sum().clamp(min=1)),
            "invalid_fraction": float((~scores.valid).float().mean()),
            "completion_length": float(rolled.lengths.float().mean()),
            "truncated_fraction": float(rolled.truncated.float().mean()),
            "mismatch_prob_diff": float(gap["mean_abs_prob_diff"]),
            "mismatch_max_prob_diff": float(gap["max_abs_prob_diff"]),
            "mismatch_log_ratio_mean": float(gap["log_ratio_mean"]),
            "mismatch_log_ratio_std": float(gap["log_ratio_std"]),
            "skipped_steps": float(self.skipped_steps),
            "loss_scale": self.scaler.scale,
            "lr": float(self.optimizers().param_groups[0]["lr"]),
        }
        if rolled.thoughts is not None:
            logged["latent_tokens"] = float(rolled.thought_mask.float().sum(dim=1).mean())
            logged["no_exit_fraction"] = float((~rolled.exited).float().mean())
        for name, values in stats.items():
            finite = [v for v in values if math.isfinite(v)]
            logged[name] = sum(finite) / len(finite) if finite else float("nan")
        logged["steps_taken"] = sum(stats.get("stepped", [0.0]))
        logged.pop("stepped", None)
        for name, value in logged.items():
            self.log(f"train/{name}", value, prog_bar=name in ("reward_mean", "accuracy"), batch_size=n)

    def _log_fill(self, fill: FillInfo, extra: dict[str, float]) -> None:
        """Dynamic sampling's draws, kept groups and the share of drawn groups that were informative."""
        logged = {
            "ds_draws": float(fill.draws),
            "ds_groups_kept": float(fill.groups_kept),
            "ds_informative_fraction": fill.informative_groups / max(1, fill.groups_drawn),
            **extra,
        }
        for name, value in logged.items():
            self.log(f"train/{name}", value, batch_size=max(1, fill.groups_kept))

    def _write_completions(self, data: dict) -> None:
        """Append this batch's rollouts to ``<run_dir>/completions.jsonl``, rewriting the file atomically."""
        path = Path(self.trainer.default_root_dir) / COMPLETIONS_FILE
        records = []
        if path.exists():
            import json

            records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        rolled, scores = data["rollouts"], data["scores"]
        for i, text in enumerate(data["texts"]):
            records.append(
                {
                    "rollout_step": self.rollout_steps,
                    "global_step": self.global_step,
                    "prompt": i // rolled.group_size,
                    "question": data["questions"][i],
                    "gold": data["golds"][i],
                    "completion": text,
                    "reward": float(scores.total[i]),
                    "rewards": {k: _finite_or_none(v[i]) for k, v in scores.per_reward.items()},
                    "valid": bool(scores.valid[i]),
                    "advantage": float(data["row_advantages"][i]),
                    "length": int(rolled.lengths[i]),
                    "truncated": bool(rolled.truncated[i]),
                    **({} if rolled.thought_mask is None else {"latent_tokens": int(rolled.thought_mask[i].sum())}),
                }
            )
        write_jsonl(path, records)

    # ----------------------------------------------------------------- validation, optimizer

    def validation_step(self, batch: dict[str, list[str]], batch_idx: int) -> None:
        """Greedy val/accuracy on the first ``reasoning.val_generate_batches`` batches (at least one)."""
        if batch_idx >= max(1, self.config.reasoning.val_generate_batches):
            return
        answers = self.policy.generate_answers(batch["questions"], self.config.reasoning.final_stage)
        correct = [float(answers_match(p, g)) for p, g in zip(answers.predictions, batch["answers"])]
        n = len(batch["questions"])
        self.log("val/accuracy", sum(correct) / n, prog_bar=True, batch_size=n)
        self.log("val/language_tokens", sum(answers.n_language) / n, batch_size=n)
        if self.latent:
            self.log("val/latent_tokens", sum(answers.n_latent) / n, batch_size=n)

    def configure_optimizers(self) -> dict[str, Any]:
        if self.config.rl.freeze_embeddings:  # the embedding rows (and a tied LM head) stay as the SFT run left them
            self.policy.reasoner.get_input_embeddings().weight.requires_grad_(False)
        params = [p for p in self.policy.parameters() if p.requires_grad]
        return adamw_warmup_cosine(params, self.config.optim, self.total_optimizer_steps())

    def total_optimizer_steps(self) -> int:
        """``trainer.max_steps``, or the rollout batches of the run x optimizer steps per batch (with dynamic
        sampling an upper bound: a short batch takes fewer steps, so the schedule may not reach its end)."""
        if self.config.trainer.max_steps > 0:
            return self.config.trainer.max_steps
        rl, G = self.config.rl, self.config.advantage.group_size
        rows = rl.prompts_per_step * G
        per_batch = rl.update_epochs * (rows // (rl.minibatch_size or rows))
        return int(self.trainer.estimated_stepping_batches) * per_batch


def _finite_or_none(value: Tensor) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _keep_groups(draws: list[dict[str, Any]], groups: Tensor, group_size: int) -> dict[str, Any]:
    """The rows of ``groups`` (ids running on across the draws, in order) of the draws' rollouts, prompts, texts and
    scores, as one batch; prompt-major again."""
    rows = (groups[:, None] * group_size + torch.arange(group_size)).flatten()  # [K] groups -> [K * G] rows
    picked = rows.tolist()
    joined = {key: [value for d in draws for value in d[key]] for key in ("prompts", "questions", "golds", "texts")}
    scores = [d["scores"] for d in draws]
    return {
        "rollouts": select_rows(concat_rollouts([d["rollouts"] for d in draws]), rows),
        "prompts": [joined["prompts"][g] for g in groups.tolist()],
        **{key: [joined[key][i] for i in picked] for key in ("questions", "golds", "texts")},
        "scores": Scores(
            total=torch.cat([s.total for s in scores])[rows],
            per_reward={name: torch.cat([s.per_reward[name] for s in scores])[rows] for name in scores[0].per_reward},
            valid=torch.cat([s.valid for s in scores])[rows],
        ),
    }
