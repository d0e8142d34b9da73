"""LatentCoTModule: the LightningModule of `task: latent_cot` (no-CoT, CoT, Coconut, ATP-Latent SFT, Latent-SFT).

It wires the pieces together: layouts come from curriculum.py, the chained forward from thoughts.py, the ELBO from
cvae.py; generation for validation and evaluation is one code path for every method (``generate_answers``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from latentlab.backbones import DTYPES, load_causal_lm
from latentlab.configs import BackboneConfig, ExperimentConfig
from latentlab.errors import ConfigError
from latentlab.eval.metrics import answers_match
from latentlab.optim import TRAIN_STREAM, VAL_STREAM, adamw_warmup_cosine, derive_seed
from latentlab.reasoning.atp_policy import ATPLatentPolicy
from latentlab.reasoning.curriculum import (
    DEFAULT_FORMAT,
    CoTTextFormat,
    LayoutVocab,
    build_prompt,
    extract_answer,
    n_thoughts_for,
)
from latentlab.reasoning.cvae import LatentStepCVAE, LatentTrace, beta_schedule, elbo_loss, stop_loss, stop_targets
from latentlab.reasoning.data import CoTBatch
from latentlab.reasoning.latent_sft import (
    GumbelMixturePolicy,
    VocabMixtureThoughts,
    step_label_loss,
    step_label_targets,
)
from latentlab.reasoning.soft_thinking import SoftThinkingPolicy, end_of_thinking_id, thinking_completion_ids
from latentlab.reasoning.thoughts import (
    ThoughtFn,
    add_thought_tokens,
    generate_from_ids,
    recording_thoughts,
    thought_forward,
)
from latentlab.weights import check_state_dict, load_lightning_checkpoint, strip_prefixes


def tokens_before_answer(token_ids: Sequence[int], tokenizer, fmt: CoTTextFormat = DEFAULT_FORMAT) -> int:
    """Language tokens generated before the answer marker starts (all of them when no marker is generated).

    These are the language reasoning tokens of CoT; decoding prefixes keeps this right for any tokenizer (a BPE may
    merge the marker with the text before it).
    """
    marker = fmt.answer_prefix.strip()
    start = tokenizer.decode(token_ids, skip_special_tokens=True).find(marker) if marker else 0
    if start < 0:
        return len(token_ids)
    count = 0  # the longest token prefix whose text ends at or before the marker
    while count < len(token_ids) and len(tokenizer.decode(token_ids[: count + 1], skip_special_tokens=True)) <= start:
        count += 1
    return count


def noisy_thoughts(inner: ThoughtFn | None, scale: float, generator: torch.Generator | None) -> ThoughtFn:
    """A thought hook adding N(0, (scale * RMS(thought))^2) noise to what ``inner`` (identity if None) feeds."""

    def thought_fn(index: int, hidden: Tensor) -> Tensor:
        fed = hidden if inner is None else inner(index, hidden)
        rms = fed.float().pow(2).mean(dim=-1, keepdim=True).sqrt()
        noise = torch.randn(fed.shape, generator=generator, device=fed.device)
        return fed + (scale * rms * noise).to(fed.dtype)

    return thought_fn


def shuffled_thoughts(inner: ThoughtFn | None) -> ThoughtFn:
    """A thought hook feeding each row the thought that ``inner`` (identity if None) makes for the next row.

    An ablation: if accuracy holds when every question reads another question's thoughts, the thoughts carry no
    information about their own question (they only add compute, like Coconut's "pause as thought" baseline).
    Row i gets row (i + 1) mod B of the batch; a batch of one is left as it is.
    """

    def thought_fn(index: int, hidden: Tensor) -> Tensor:
        fed = hidden if inner is None else inner(index, hidden)
        return fed.roll(-1, dims=0)

    return thought_fn


@dataclass
class GeneratedAnswers:
    """Answers to a batch of questions; counts are per question."""

    texts: list[str]
    """Generated language text (special tokens skipped)."""
    predictions: list[str]
    """The extracted answers (``extract_answer``)."""
    n_latent: list[int]
    """Continuous thoughts fed (``<bot>``/``<eot>`` not counted)."""
    n_language: list[int]
    """Language tokens generated before EOS."""
    n_reasoning_language: list[int]
    """Language tokens generated before the answer marker (CoT's written steps)."""
    latents: Tensor | None = None
    """atp_latent: the z of each thought, [B, K, c, Z] grouped per step; None for other methods."""


class LatentCoTModule(L.LightningModule):
    """Reasoner with thought tokens (+ the ATP-Latent CVAE): answer CE on the language after ``<eot>`` (+ ELBO)."""

    def __init__(self, config: ExperimentConfig):
        super().__init__()
        self.config = config
        r = config.reasoning
        loaded = load_causal_lm(BackboneConfig(model=r.reasoner, precision=r.precision), key="reasoning.reasoner")
        model = loaded.model
        is_tiny = isinstance(r.reasoner, dict) and "tiny" in r.reasoner
        if r.train_from_scratch and not is_tiny:  # a tiny spec is random (and seeded) already
            model = type(model)(model.config).to(DTYPES[r.precision])
        if r.dropout is not None:
            for layer in model.modules():
                if isinstance(layer, nn.Dropout):
                    layer.p = r.dropout
        model.requires_grad_(True)
        model.train()
        self.reasoner = model
        self.tokenizer = loaded.tokenizer
        self.thought_tokens = add_thought_tokens(self.tokenizer, model, init_from_text=r.init_thoughts_from)
        t = self.thought_tokens
        self.vocab = LayoutVocab.from_tokenizer(self.tokenizer, t.bot_id, t.thought_id, t.eot_id)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.vocab.eos_id
        self.fmt = DEFAULT_FORMAT
        self.cvae = (
            LatentStepCVAE(r.cvae, model.config.hidden_size, len(self.tokenizer)) if r.method == "atp_latent" else None
        )
        self.rollout_sampling = config.task == "latent_rl"
        """A latent_rl config: sampled answers (temperature > 0) sample every choice its rollouts sample (atp_latent:
        z from the Gaussian and the stop head; latent_sft samples Gumbel thoughts under either task)."""
        self.soft_thinking = getattr(config, "soft_thinking", None)
        """SofT-GRPO's soft-thinking settings (a latent_rl config's ``soft_thinking``); None: discrete reasoning."""
        self.end_of_thinking_id = None if self.soft_thinking is None else self._end_of_thinking_id()
        """SofT-GRPO: the first token of ``soft_thinking.end_text``, checked once, here (None without soft thinking)."""
        self.last_reset_epoch = 0
        """Epoch whose start last reset the optimizer (saved in checkpoints, so a resumed epoch is not reset twice)."""

    # ----------------------------------------------------------------- weights

    def _init_state(self, source: str | Path, prefix: str, target: nn.Module, what: str, hint: str) -> None:
        """Load ``target`` from the ``prefix`` entries of a run directory's last.ckpt or a .ckpt, checked first."""
        path = Path(source)
        ckpt = path / "last.ckpt" if path.is_dir() else path
        if not ckpt.exists():
            raise ConfigError(f"key 'reasoning.init_from': no checkpoint at {ckpt} (expected a run dir or a .ckpt)")
        state = strip_prefixes(load_lightning_checkpoint(ckpt)["state_dict"], (prefix,))
        check_state_dict(target.state_dict(), state, f"reasoning.init_from {ckpt}", what, hint=hint)
        target.load_state_dict(state)

    def load_reasoner_from(self, source: str | Path) -> None:
        """Start from the reasoner weights of a run directory (its last.ckpt) or a .ckpt (``reasoning.init_from``)."""
        hint = "it must come from a run with the same reasoning.reasoner"
        self._init_state(source, "reasoner.", self.reasoner, "this reasoner", hint)

    def load_cvae_from(self, source: str | Path) -> None:
        """The CVAE weights of an atp_latent run (ATP-Latent RL starts from its SFT run's heads and decoder)."""
        if self.cvae is None:
            raise ConfigError("load_cvae_from: this reasoner has no CVAE (method is not atp_latent)")
        hint = "it must come from an atp_latent run with the same reasoning.cvae shapes"
        self._init_state(source, "cvae.", self.cvae, "this CVAE", hint)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["latent_cot"] = {"last_reset_epoch": self.last_reset_epoch, "vocab_size": len(self.tokenizer)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_state_dict(
            self.state_dict(),
            checkpoint.get("state_dict", {}),
            "checkpoint",
            "this latent_cot module",
            hint="was it trained with another reasoning.method or reasoner?",
        )
        self.last_reset_epoch = checkpoint.get("latent_cot", {}).get("last_reset_epoch", 0)

    # ----------------------------------------------------------------- losses

    def compute_losses(self, batch: CoTBatch, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Answer CE (token mean over the language after the thoughts) and, for atp_latent, the step ELBO."""
        r = self.config.reasoning
        losses: dict[str, Tensor] = {}
        if self.cvae is None or batch.thoughts.n_thoughts == 0:
            hooks = self.mixture_thoughts() if r.method == "latent_sft" else None
            thought_fn = None if hooks is None else hooks.thought_fn
            if hooks is not None and r.latent_sft.train_noise and self.training:
                thought_fn = hooks.noisy_thought_fn(r.latent_sft.gumbel, generator)
            out = thought_forward(self.reasoner, batch.thoughts, thought_fn=thought_fn)
            losses["answer_ce"] = out.loss
            losses["loss"] = out.loss
            if hooks is not None and batch.thoughts.n_thoughts:
                used = batch.thoughts.thought_mask.to(self.device)
                losses["stay_ce"] = hooks.stay_loss(out.thought_contexts, used)
                losses["loss"] = out.loss + r.latent_sft.exit_weight * losses["stay_ce"]
                if r.latent_sft.step_label_weight > 0:
                    ids, mask = step_label_targets(
                        batch.step_ids.to(self.device), batch.step_lengths, r.curriculum.thoughts_per_step
                    )
                    logp = hooks.logits(out.thought_contexts).log_softmax(dim=-1)
                    losses["step_label_ce"] = step_label_loss(logp, ids, mask.to(self.device), used)
                    losses["loss"] = losses["loss"] + r.latent_sft.step_label_weight * losses["step_label_ce"]
            return losses
        step_ids, lengths = batch.step_ids.to(self.device), batch.step_lengths.to(self.device)
        thought_fn, trace = self.cvae.training_hook(self.cvae.encode_steps(step_ids, lengths), generator)
        out = thought_forward(self.reasoner, batch.thoughts, thought_fn=thought_fn)
        recon, kl = self.cvae.step_losses(trace, step_ids, lengths, self.vocab.eos_id)  # [B, K] each
        beta = beta_schedule(self.global_step, r.cvae.beta, r.cvae.beta_warmup_steps)
        elbo = elbo_loss(recon, kl, beta)
        losses.update(answer_ce=out.loss, recon=recon.mean(), kl=kl.mean(), beta=torch.tensor(beta), elbo=elbo)
        losses["loss"] = out.loss + r.elbo_weight * elbo
        if self.cvae.stop is not None:
            mask = batch.thoughts.thought_mask.to(self.device)
            targets, valid = stop_targets(mask.sum(dim=1), mask.shape[1], r.cvae.thoughts_per_step)
            logits = self.cvae.stop_logits(LatentTrace.stack(trace.z))
            losses["stop"] = stop_loss(logits, targets, valid)
            hits = (logits.argmax(dim=-1) == targets)[valid]
            losses["stop_accuracy"] = hits.float().mean() if hits.numel() else torch.tensor(1.0)
            losses["loss"] = losses["loss"] + r.cvae.stop_weight * losses["stop"]
        return losses

    def mixture_thoughts(self) -> VocabMixtureThoughts:
        """latent_sft: the top-K vocabulary-superposition thought and its ``<eot>`` exit, on this reasoner."""
        return VocabMixtureThoughts(self.reasoner, self.config.reasoning.latent_sft.topk, self.thought_tokens.eot_id)

    def gumbel_thoughts(self, model: nn.Module | None = None) -> GumbelMixturePolicy:
        """latent_sft: the Gumbel thought policy (``reasoning.latent_sft.gumbel``) on ``model`` (default: this
        reasoner), which RL rollouts and sampled answers draw their thoughts from."""
        r = self.config.reasoning
        model = self.reasoner if model is None else model
        return GumbelMixturePolicy(model, r.latent_sft.topk, self.thought_tokens.eot_id, r.latent_sft.gumbel)

    def thought_slots(self, stage: int) -> int:
        """Thought slots of every answer at ``stage`` (the inference rule, no gold steps): SofT-GRPO's
        ``soft_thinking.max_thinking``; latent_sft's whole budget (``reasoning.max_latents``), since its chain ends
        where the reasoner predicts ``<eot>``; otherwise ``n_thoughts_for(None, stage)``."""
        r = self.config.reasoning
        if self.soft_thinking is not None:
            return self.soft_thinking.max_thinking
        n = n_thoughts_for(None, stage, r.curriculum)
        return r.max_latents if r.method == "latent_sft" and n else n

    def prompts_at(self, questions: Sequence[str], stage: int) -> list[tuple[list[int], int]]:
        """(prefix ids, thought slots: ``thought_slots(stage)``) of each question at ``stage``."""
        r = self.config.reasoning
        slots = self.thought_slots(stage)
        return [(build_prompt(q, stage, r.curriculum, self.vocab, self.fmt)[0], slots) for q in questions]

    # ----------------------------------------------------------------- generation (validation and evaluation)

    def generate_answers(
        self,
        questions: Sequence[str],
        stage: int,
        temperature: float = 0.0,
        thought_noise: float = 0.0,
        generator: torch.Generator | None = None,
        max_new_tokens: int | None = None,
        shuffle_thoughts: bool = False,
        top_k: int = 0,
        top_p: float = 1.0,
    ) -> GeneratedAnswers:
        """Answer ``questions`` as at ``stage``: question, thoughts (``n_thoughts_for(None, stage)``), ``<eot>``, text.

        Greedy by default; ``temperature > 0`` samples tokens (Gumbel-max; ``top_k`` / ``top_p`` filter them as the RL
        rollouts do, 0 / 1 = off), ``thought_noise > 0`` perturbs each thought,
        ``shuffle_thoughts`` feeds each question the next question's thoughts (``shuffled_thoughts``).
        cot/no_cot run the same path with no thoughts and no markers. atp_latent feeds the CVAE's z (see cvae.py;
        under a latent_rl config, sampled answers draw z and the stop as ATP-Latent RL's rollouts do);
        latent_sft feeds vocabulary superpositions until the reasoner predicts ``<eot>`` (see latent_sft.py); with
        ``temperature > 0`` they are Gumbel-perturbed (``reasoning.latent_sft.gumbel``), as in Latent-GRPO's rollouts.
        """
        r = self.config.reasoning
        if self.soft_thinking is not None:
            return self._soft_answers(questions, temperature, generator, max_new_tokens, top_k, top_p)
        prompts = self.prompts_at(questions, stage)
        thought_fn, trace, stop_fn, recorder = None, None, None, None
        if r.method == "latent_sft" and temperature > 0:  # sampled answers: Gumbel thoughts, as the RL rollouts
            policy = self.gumbel_thoughts()
            thought_fn, stop_fn = (lambda index, hidden: policy.draw(index, hidden, generator).fed), policy.stop_fn
        elif r.method == "latent_sft":
            hooks = self.mixture_thoughts()
            thought_fn, stop_fn = hooks.thought_fn, hooks.stop_fn
        if self.cvae is not None and temperature > 0 and self.rollout_sampling:
            policy = ATPLatentPolicy(self.cvae)  # ATP-Latent RL's rollouts: z ~ the Gaussian, a sampled stop
            thought_fn, recorder = recording_thoughts(policy, generator)
            stop_fn = policy.stop_fn
        elif self.cvae is not None:
            thought_fn, trace = self.cvae.inference_hook(generator)
            if self.cvae.stop is not None:
                stop_fn = self.cvae.stop_hook(trace)
        if thought_noise > 0 and r.latent:
            thought_fn = noisy_thoughts(thought_fn, thought_noise, generator)
        if shuffle_thoughts and r.latent:
            thought_fn = shuffled_thoughts(thought_fn)
        markers = r.curriculum.mode == "coconut"
        result = generate_from_ids(
            self.reasoner,
            [p for p, _ in prompts],
            [n for _, n in prompts],
            max_new_tokens or self.config.sampling.max_new_tokens,
            eos_id=self.vocab.eos_id,
            eot_id=self.thought_tokens.eot_id if markers else None,
            pad_id=self.pad_id,
            thought_fn=thought_fn,
            temperature=temperature,
            generator=generator,
            stop_fn=stop_fn,
            top_k=top_k,
            top_p=top_p,
        )
        texts = self.tokenizer.batch_decode(result.token_ids, skip_special_tokens=True)
        latents = None
        if trace is not None and trace.z:
            latents = self.cvae.group(LatentTrace.stack(trace.z))
        elif recorder is not None and recorder.draws:  # the ATP-Latent policy's sampled z
            latents = self.cvae.group(recorder.recorded().sample["z"])
        return GeneratedAnswers(
            texts=texts,
            predictions=[extract_answer(t, self.fmt) for t in texts],
            n_latent=list(result.n_latent_tokens),
            n_language=list(result.n_language_tokens),
            n_reasoning_language=[tokens_before_answer(ids, self.tokenizer, self.fmt) for ids in result.token_ids],
            latents=latents,
        )

    def soft_policy(self, model: nn.Module | None = None, noise: bool = True) -> SoftThinkingPolicy:
        """SofT-GRPO's soft-thinking policy (``soft_thinking``) on ``model`` (default: this reasoner); ``noise=False``
        draws no Gumbel noise (greedy answers: the mixture of the unperturbed top-k at tau_g)."""
        if self.soft_thinking is None:
            raise ConfigError("this reasoner's config has no soft_thinking section")
        config = self.soft_thinking if noise else dataclasses.replace(self.soft_thinking, noise_factor=0.0)
        return SoftThinkingPolicy(self.reasoner if model is None else model, config, self.end_of_thinking_id)

    def _end_of_thinking_id(self) -> int:
        """The first token of ``soft_thinking.end_text``, which must start the answer marker the layouts encode."""
        end_id = end_of_thinking_id(self.tokenizer, self.soft_thinking.end_text)
        marker = self.vocab.encode(self.fmt.answer_prefix)
        if not marker or marker[0] != end_id:
            raise ConfigError(
                f"key 'soft_thinking.end_text': {self.soft_thinking.end_text!r} starts with token {end_id}, but the "
                f"answer marker {self.fmt.answer_prefix!r} the reasoner was trained on starts with {marker[:1]}; "
                "thinking must end where the answer starts"
            )
        return end_id

    def _soft_answers(
        self,
        questions: Sequence[str],
        temperature: float,
        generator: torch.Generator | None,
        max_new_tokens: int | None,
        top_k: int,
        top_p: float,
    ) -> GeneratedAnswers:
        """SofT-GRPO's answers: the question (stage 0), soft-thinking tokens until the recorded token is the end of
        thinking (noisy when ``temperature > 0``), that token, then discrete tokens; the text is the thinking block's
        recorded tokens, the end token and the generated ones."""
        policy = self.soft_policy(noise=temperature > 0)
        thought_fn, recorder = recording_thoughts(policy, generator)
        prompts = self.prompts_at(questions, 0)
        result = generate_from_ids(
            self.reasoner,
            [ids for ids, _ in prompts],
            [n for _, n in prompts],
            max_new_tokens or self.config.sampling.max_new_tokens,
            eos_id=self.vocab.eos_id,
            eot_id=policy.end_id,
            pad_id=self.pad_id,
            thought_fn=thought_fn,
            temperature=temperature,
            generator=generator,
            stop_fn=policy.stop_fn,
            top_k=top_k,
            top_p=top_p,
        )
        ids = thinking_completion_ids(
            recorder.recorded().sample["ids"], result.thought_mask, policy.end_id, result.token_ids
        )
        texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        return GeneratedAnswers(
            texts=texts,
            predictions=[extract_answer(t, self.fmt) for t in texts],
            n_latent=list(result.n_latent_tokens),
            n_language=list(result.n_language_tokens),
            n_reasoning_language=[0] * len(texts),  # the reasoning is the soft tokens (n_latent)
        )

    # ----------------------------------------------------------------- Lightning hooks

    def training_step(self, batch: CoTBatch, batch_idx: int) -> Tensor:
        generator = torch.Generator(device=self.device).manual_seed(
            derive_seed(self.config.seed, TRAIN_STREAM, self.global_step)
        )
        losses = self.compute_losses(batch, generator)
        for name, value in losses.items():
            self.log(f"train/{name}", value, prog_bar=name == "loss", batch_size=len(batch))
        self.log("train/stage", float(batch.stage), batch_size=len(batch))
        return losses["loss"]

    def validation_step(self, batch: CoTBatch, batch_idx: int) -> None:
        generator = torch.Generator(device=self.device).manual_seed(
            derive_seed(self.config.seed, VAL_STREAM, batch_idx)
        )
        losses = self.compute_losses(batch, generator)
        for name, value in losses.items():
            self.log(f"val/{name}", value, prog_bar=name == "loss", batch_size=len(batch))
        if batch_idx < self.config.reasoning.val_generate_batches:
            answers = self.generate_answers(batch.questions, batch.stage)
            correct = [float(answers_match(p, g)) for p, g in zip(answers.predictions, batch.answers)]
            n = len(batch)
            self.log("val/accuracy", sum(correct) / n, prog_bar=True, batch_size=n)
            self.log("val/latent_tokens", sum(answers.n_latent) / n, batch_size=n)
            self.log("val/language_tokens", sum(answers.n_language) / n, batch_size=n)
        self.log("val/stage", float(batch.stage), batch_size=len(batch))

    def on_train_epoch_start(self) -> None:
        """Coconut's fresh optimizer at a stage change: Adam's moments and step counts are cleared, LR kept."""
        r, epoch = self.config.reasoning, self.current_epoch
        if not (r.latent and r.curriculum.reset_optimizer_each_stage) or epoch <= self.last_reset_epoch:
            return
        if r.stage_at_epoch(epoch) != r.stage_at_epoch(epoch - 1):
            for optimizer in self.trainer.optimizers:
                optimizer.state.clear()
            self.last_reset_epoch = epoch

    def configure_optimizers(self) -> dict[str, Any]:
        return adamw_warmup_cosine(self.parameters(), self.config.optim, self.trainer.estimated_stepping_batches)
