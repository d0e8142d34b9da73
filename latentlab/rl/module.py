"""GRPOModule: the LightningModule of `task: latent_rl`, GRPO on the discrete tokens of a CoT / no-CoT reasoner.

It wires the pure pieces together (manual optimisation): one training batch = ``rl.prompts_per_step`` questions,

1. roll out G = ``advantage.group_size`` completions each (``rollout.rollout``, no grad, ``rl.rollout_precision``),
   recording mu; score them (``rewards.score``, gold answers column ``answer``); advantages
   (``advantages.group_advantages`` with the scorable mask);
2. recompute pi_old (no grad, ``rl.train_precision``) and, with ``rl.reference``, the frozen reference's log-probs;
3. ``rl.update_epochs`` passes over shuffled minibatches of whole groups: recompute pi with gradient,
   ``policy_loss(pi, mu, A, mask, old_logp=pi_old)``, backward, clip to ``trainer.gradient_clip_val``, step.

mu is the rollout's ``tempered_logprobs`` (log_softmax(logits / T) of the chosen token, no top-k / top-p), which is
what the teacher-forced recompute scores (TRL's and verl's convention; equal to the sampling density when top_k and
top_p are off). Every optimizer step whose gradient norm is not finite is skipped and counted; with fp16 training the
loss is scaled dynamically (GradScaler's rule: halve on a skip, double after ``rl.loss_scale_growth_interval`` finite
steps) and the scaler's state is saved in checkpoints. ``trainer.max_steps`` counts optimizer steps taken.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
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
from latentlab.reasoning.curriculum import build_prompt
from latentlab.reasoning.module import LatentCoTModule
from latentlab.rl.advantages import group_advantages
from latentlab.rl.policy_loss import check_policy_loss_config, policy_loss
from latentlab.rl.rewards import REWARDS, score
from latentlab.rl.rollout import Rollouts, mismatch, recompute_logprobs, rollout

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

    # ----------------------------------------------------------------- weights

    def load_reasoner_from(self, source: str | Path) -> None:
        """Start from a latent_cot run's reasoner (``reasoning.init_from``); then freeze the reference copy."""
        self.policy.load_reasoner_from(source)

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
        """The questions as the SFT reasoner saw them at stage 0 (cot / no_cot: no thoughts, no markers)."""
        p = self.policy
        return [build_prompt(q, 0, self.config.reasoning.curriculum, p.vocab, p.fmt)[0] for q in questions]

    def _recompute(self, model: torch.nn.Module, rollouts: Rollouts, prompts, precision: str) -> Tensor:
        with autocast(self.device, precision):
            return recompute_logprobs(model, rollouts, prompts, self.config.sampling.temperature).float()

    def _recompute_all(self, model: torch.nn.Module, rolled: Rollouts, prompts, precision: str) -> Tensor:
        """Log-probs of every row, no grad, in minibatch-sized chunks of whole groups (as the update sees them)."""
        G, n = rolled.group_size, rolled.completion_ids.shape[0]
        size = self.config.rl.minibatch_size or n
        chunks = []
        with torch.no_grad():
            for rows in torch.arange(n).split(size):
                groups = prompts[int(rows[0]) // G : int(rows[-1]) // G + 1]
                chunks.append(self._recompute(model, _select(rolled, rows), groups, precision))
        return torch.cat(chunks)

    def _rollout(self, questions: list[str], answers: list[str]) -> dict[str, Any]:
        """Roll out, score and compute advantages for ``questions``; everything the update needs, detached."""
        cfg, G = self.config, self.config.advantage.group_size
        prompts = self.prompt_ids(questions)
        generator = torch.Generator(device=self.device).manual_seed(
            derive_seed(cfg.seed, TRAIN_STREAM, self.rollout_steps)
        )
        reasoner = self.policy.reasoner
        with torch.no_grad(), autocast(self.device, cfg.rl.rollout_precision):
            rolled = rollout(
                reasoner,
                prompts,
                G,
                max_new_tokens=cfg.sampling.max_new_tokens,
                eos_id=self.policy.vocab.eos_id,
                pad_id=self.policy.pad_id,
                temperature=cfg.sampling.temperature,
                top_k=cfg.sampling.top_k,
                top_p=cfg.sampling.top_p,
                generator=generator,
            )
        texts = self.policy.tokenizer.batch_decode(rolled.token_ids, skip_special_tokens=True)
        row_questions = [q for q in questions for _ in range(G)]
        golds = [str(a) for a in answers for _ in range(G)]
        scores = score(row_questions, texts, cfg.reward, answer=golds, completion_lengths=rolled.completion_lengths)
        advantages = group_advantages(scores.total, cfg.advantage, scores.valid).to(self.device)
        old_logp = self._recompute_all(reasoner, rolled, prompts, cfg.rl.train_precision)
        ref_logp = None
        if self.reference is not None:
            ref_logp = self._recompute_all(self.reference, rolled, prompts, cfg.rl.train_precision)
        return {
            "rollouts": rolled,
            "prompts": prompts,
            "questions": row_questions,
            "golds": golds,
            "texts": texts,
            "scores": scores,
            "advantages": advantages,
            "old_logp": old_logp,
            "ref_logp": ref_logp,
        }

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
        cfg, k = self.config, self.config.rl.prompts_per_step
        self.policy.eval()  # no dropout: the rollout, pi_old and the update score the same function
        data = self._rollout(batch["questions"][:k], batch["answers"][:k])
        rolled: Rollouts = data["rollouts"]
        mask = rolled.mask.to(self.device)
        mu = rolled.tempered_logprobs.to(self.device)
        stats: dict[str, list[float]] = {}
        for _ in range(cfg.rl.update_epochs):
            for rows in self._minibatches(mask.shape[0]):
                rows_d = rows.to(self.device)
                sub = _select(rolled, rows)
                prompts = [data["prompts"][int(r) // rolled.group_size] for r in rows[:: rolled.group_size]]
                logp = self._recompute(self.policy.reasoner, sub, prompts, cfg.rl.train_precision)
                ref = data["ref_logp"]
                out = policy_loss(
                    logp,
                    mu[rows_d],
                    data["advantages"][rows_d],
                    mask[rows_d],
                    cfg.policy_loss,
                    old_logp=data["old_logp"][rows_d],
                    ref_logp=None if ref is None else ref[rows_d],
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
        for name, values in stats.items():
            finite = [v for v in values if math.isfinite(v)]
            logged[name] = sum(finite) / len(finite) if finite else float("nan")
        logged["steps_taken"] = sum(stats.get("stepped", [0.0]))
        logged.pop("stepped", None)
        for name, value in logged.items():
            self.log(f"train/{name}", value, prog_bar=name in ("reward_mean", "accuracy"), batch_size=n)

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
                    "advantage": float(data["advantages"][i]),
                    "length": int(rolled.lengths[i]),
                    "truncated": bool(rolled.truncated[i]),
                }
            )
        write_jsonl(path, records)

    # ----------------------------------------------------------------- validation, optimizer

    def validation_step(self, batch: dict[str, list[str]], batch_idx: int) -> None:
        """Greedy val/accuracy on the first ``reasoning.val_generate_batches`` batches (at least one)."""
        if batch_idx >= max(1, self.config.reasoning.val_generate_batches):
            return
        answers = self.policy.generate_answers(batch["questions"], 0)
        correct = [float(answers_match(p, g)) for p, g in zip(answers.predictions, batch["answers"])]
        n = len(batch["questions"])
        self.log("val/accuracy", sum(correct) / n, prog_bar=True, batch_size=n)
        self.log("val/language_tokens", sum(answers.n_language) / n, batch_size=n)

    def configure_optimizers(self) -> dict[str, Any]:
        return adamw_warmup_cosine(self.policy.parameters(), self.config.optim, self.total_optimizer_steps())

    def total_optimizer_steps(self) -> int:
        """``trainer.max_steps``, or the rollout batches of the run x optimizer steps per batch."""
        if self.config.trainer.max_steps > 0:
            return self.config.trainer.max_steps
        rl, G = self.config.rl, self.config.advantage.group_size
        rows = rl.prompts_per_step * G
        per_batch = rl.update_epochs * (rows // (rl.minibatch_size or rows))
        return int(self.trainer.estimated_stepping_batches) * per_batch


def _finite_or_none(value: Tensor) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _select(rolled: Rollouts, rows: Tensor) -> Rollouts:
    """The rollouts of ``rows`` (whole groups, in group order) as a ``Rollouts`` for ``recompute_logprobs``."""
    return dataclasses.replace(
        rolled,
        completion_ids=rolled.completion_ids[rows],
        token_ids=[rolled.token_ids[i] for i in rows.tolist()],
        mask=rolled.mask[rows],
        lengths=rolled.lengths[rows],
        truncated=rolled.truncated[rows],
        logprobs=rolled.logprobs[rows],
        tempered_logprobs=rolled.tempered_logprobs[rows],
        top_logprobs=None,
        top_ids=None,
    )
