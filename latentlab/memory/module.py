"""LatentMemoryModule: the LightningModule that trains the compressor end to end with its three losses (and, for image
items, the image terms of ``loss.image``).

It only wires things together: the losses are pure functions (losses.py), prompts come from prompting.py,
the frozen generator from generator.py and the image path from vision.py.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from latentlab.configs import MemoryExperimentConfig, resolve_path
from latentlab.data.modules import QABatch
from latentlab.data.schema import described_item, read_corpus
from latentlab.distributed import unwrapped_name
from latentlab.errors import DataError, LatentLabError
from latentlab.memory.compressor import part_of
from latentlab.memory.generator import Generator
from latentlab.memory.losses import (
    distillation_kl,
    embedding_reconstruction_mse,
    multi_positive_infonce,
    token_cross_entropy,
)
from latentlab.memory.model import LatentMemoryModel
from latentlab.memory.prompting import PromptBuilder, pack_prompts
from latentlab.memory.vision import image_prefix
from latentlab.optim import TRAIN_STREAM, VAL_STREAM, adamw_warmup_cosine, derive_seed
from latentlab.weights import check_state_dict

PARAPHRASE_INSTRUCTION = "Repeat the latent context word for word."
"""The question of the paraphrase prompt: the generator reads one latent and is taught to say its text."""


class LatentMemoryModule(L.LightningModule):
    """Compressor (trained: LoRA adapters, memory slot, heads) + frozen generator; loss = weighted sum of three."""

    def __init__(self, config: MemoryExperimentConfig):
        super().__init__()
        self.config = config
        self.strict_loading = False  # checkpoints hold only trainable weights; see on_load_checkpoint
        model = LatentMemoryModel(config)
        # Registered piece by piece, so checkpoints keep the layout every earlier run wrote ("compressor.*"); the
        # inference view of the same weights is kept beside them, not registered a second time.
        self.compressor = model.compressor
        if hasattr(model, "generator_lm"):
            self.generator_lm = model.generator_lm
        object.__setattr__(self, "model", model)
        formats = config.loss.student_slot_formats or [config.generator.slot_format]
        self.student_builders = [self.model.prompt_builder(f) for f in formats]
        self.teacher_cache: dict[str, list[int]] = {}
        self.reply_cache: dict[str, list[int]] = {}
        self.frozen_latents: dict[tuple[str, str], torch.Tensor] = {}
        self.unlabelled = _unlabelled_texts(config)
        # Everything learned goes into checkpoints; the optimizer gets the parts this run trains.
        self._learned = {name for name, p in self.named_parameters() if p.requires_grad}
        self.train_parts = set(config.compressor.train_parts)
        self._trainable = {name for name in self._learned if part_of(name) in self.train_parts}

    @property
    def generator(self) -> Generator:
        return self.model.generator

    @property
    def prompts(self) -> PromptBuilder:
        return self.model.prompts

    # ----------------------------------------------------------------- the three losses

    def teacher_answers(self, batch: QABatch) -> list[list[int]]:
        """Greedy answer tokens of the generator reading the raw positives (frozen, so cached per question)."""
        missing = [b for b, qid in enumerate(batch.question_ids) if qid not in self.teacher_cache]
        if missing:
            prompts = [self.prompts.text(batch.questions[b], self._positives_of(batch, b)) for b in missing]
            packed = pack_prompts(prompts, self.generator.embed, padding_side="left", pad_id=self.generator.pad_id)
            rows = self.generator.greedy(packed, self.config.loss.distill_tokens)
            for b, row in zip(missing, rows):
                self.teacher_cache[batch.question_ids[b]] = row or [self.generator.eos_ids[0]]
        return [self.teacher_cache[qid] for qid in batch.question_ids]

    def reply_tokens(self, text: str) -> list[int]:
        """``text`` as a generator reply: its token ids (at most max_evidence_tokens) and the end of turn (cached)."""
        if text not in self.reply_cache:
            tok = self.generator.tokenizer
            end = tok.eos_token_id if tok.eos_token_id is not None else self.generator.eos_ids[0]
            ids = tok(text, add_special_tokens=False)["input_ids"][: self.config.compressor.max_evidence_tokens]
            self.reply_cache[text] = ids + [end]
        return self.reply_cache[text]

    def gold_answers(self, batch: QABatch) -> list[list[int]]:
        """Each question's first gold answer as a generator reply (``reply_tokens``)."""
        return [self.reply_tokens(answers[0]) for answers in batch.answers]

    def _reply_logits(
        self, prompts, projected: torch.Tensor | None, replies: list[list[int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Generator logits [N, V] at the N reply tokens, teacher-forced after ``prompts`` (latent slots filled from
        ``projected``; the shared system prompt read from its key/value cache), and those N tokens."""
        packed = pack_prompts(
            prompts, self.generator.embed, projected, replies, pad_id=self.generator.pad_id, split_prefix=True
        )
        return self.generator.continuation_logits(packed, read=projected is not None), packed.continuation_targets

    def _reply_cross_entropy(self, prompts, projected: torch.Tensor, replies: list[list[int]]) -> torch.Tensor:
        """Token-mean CE of the generator teacher-forced on ``replies`` after latent ``prompts`` (slots: ``projected``)."""
        return token_cross_entropy(*self._reply_logits(prompts, projected, replies))

    def _positives_of(self, batch: QABatch, b: int) -> list[str]:
        return [t for t, o in zip(batch.positives, batch.positive_owner.tolist()) if o == b]

    def _student_slots(self, batch: QABatch, generator: torch.Generator) -> list[list[int]]:
        """Per question: indices (into positives + negatives) of the items the student reads (``loss.student_context``).

        `sampled`: its positives plus 0..student_distractors_max random hard negatives, in random order (so position
        does not give positives away). `retrieved`: its positives and its best-ranked negatives, eval.k in all, in
        rank order, as a memory would return them.
        """
        num_pos = len(batch.positives)
        pos_owner, neg_owner = batch.positive_owner.tolist(), batch.negative_owner.tolist()
        retrieved = self.config.loss.student_context == "retrieved"
        if retrieved:
            if batch.positive_rank is None or batch.negative_rank is None:
                raise LatentLabError("loss.student_context 'retrieved' needs mined negatives (loss.negatives: mined)")
            ranks = torch.cat([batch.positive_rank, batch.negative_rank]).tolist()  # by index into texts
        slots = []
        for b in range(len(batch)):
            own = [i for i, o in enumerate(pos_owner) if o == b]
            negatives = [num_pos + i for i, o in enumerate(neg_owner) if o == b]
            if retrieved:
                negatives.sort(key=ranks.__getitem__)
                chosen = own + negatives[: max(0, self.config.eval.k - len(own))]
                slots.append(sorted(chosen, key=ranks.__getitem__))
                continue
            limit = min(self.config.loss.student_distractors_max, len(negatives))
            count = int(torch.randint(0, limit + 1, (1,), generator=generator)) if limit else 0
            picks = torch.randperm(len(negatives), generator=generator)[:count].tolist()
            chosen = own + [negatives[i] for i in picks]
            order = torch.randperm(len(chosen), generator=generator).tolist()
            slots.append([chosen[i] for i in order])
        return slots

    def latents_of(self, texts: list[str], adapter: str) -> torch.Tensor:
        """[N, H] latents of ``texts`` through ``adapter`` (compress or query).

        When this run trains neither that adapter nor the memory slot, the latents are fixed: each text is
        compressed once, without gradients or dropout, and cached.
        """
        comp = self.compressor
        max_tokens = comp.config.max_evidence_tokens if adapter == "compress" else comp.config.max_query_tokens
        if self.train_parts & {f"{adapter}_lora", "memory_slot"}:
            return comp.encode_ids(*comp.tokenize(texts, max_tokens), adapter)
        missing = [t for t in dict.fromkeys(texts) if (adapter, t) not in self.frozen_latents]
        if missing:
            was_training = comp.training
            comp.eval()
            with torch.no_grad():
                latents = comp.encode_ids(*comp.tokenize(missing, max_tokens), adapter)
            comp.train(was_training)
            self.frozen_latents.update({(adapter, t): z for t, z in zip(missing, latents)})
        return torch.stack([self.frozen_latents[(adapter, t)] for t in texts]).to(self.device)

    def image_latents(self, items: list) -> tuple[torch.Tensor, torch.Tensor]:
        """Image items -> (latents [I, H], the tower's pooled embeddings [I, E], detached): the tower runs once for
        both the latent and the embedding-reconstruction target. No gradient when this run trains none of the parts
        an image latent passes through."""
        comp = self.compressor
        learns = bool(self.train_parts & {"compress_lora", "memory_slot", "vision_tower", "vision_projector"})
        with torch.set_grad_enabled(torch.is_grad_enabled() and learns):
            pooled, tokens = comp.vision.encode(items)
            latents = comp.encode_embeds(*image_prefix(comp, items, (pooled, tokens)), "compress")
        return latents, pooled.detach()

    def item_latents(self, batch: QABatch) -> tuple[torch.Tensor, list[int], torch.Tensor | None]:
        """Latents [M, H] of the batch's items (positives then negatives), the rows that are images and their pooled
        tower embeddings [I, E] (None without images). Text items go through ``latents_of``, as before images."""
        texts = batch.positives + batch.negatives
        items = batch.positive_items + batch.negative_items
        image_rows = [i for i, item in enumerate(items) if item.image]
        if not image_rows:
            return self.latents_of(texts, "compress"), [], None
        images = set(image_rows)
        text_rows = [i for i in range(len(texts)) if i not in images]
        image_latents, pooled = self.image_latents([items[i] for i in image_rows])
        parts = [image_latents]
        if text_rows:
            parts.insert(0, self.latents_of([texts[i] for i in text_rows], "compress"))
        order = torch.argsort(torch.tensor(text_rows + image_rows, device=image_latents.device))
        return torch.cat(parts)[order], image_rows, pooled

    def compute_losses(self, batch: QABatch, step_seed: int) -> dict[str, torch.Tensor]:
        """Each loss whose weight is above zero, their weighted sum (``loss``) and in-pool ``recall@1``.

        A question with an image positive is an image question: its contrastive and distillation terms are logged
        and weighted as ``image_contrast`` and ``image_distill`` (``loss.image``); image items are rebuilt as their
        title (``title_recon``), their description where they have one (``caption_recon``) and their tower embedding
        (``image_embed``), never as their text path would read them.
        """
        cfg, comp = self.config.loss, self.compressor
        texts = batch.positives + batch.negatives
        items = batch.positive_items + batch.negative_items
        num_pos = len(batch.positives)
        latents, image_rows, pooled = self.item_latents(batch)  # each item compressed once per step
        query_latents = self.latents_of(batch.questions, "query")
        losses: dict[str, torch.Tensor] = {}
        total = latents.new_zeros(())
        images = set(image_rows)
        image_question = torch.zeros(len(batch), dtype=torch.bool, device=self.device)
        owner_of_positive = batch.positive_owner.to(self.device)
        image_question[owner_of_positive[[i for i in range(num_pos) if i in images]]] = True
        has_images = bool(image_rows)

        owners = torch.cat([batch.positive_owner, torch.full_like(batch.negative_owner, -1)]).to(self.device)
        positive_mask = owners.unsqueeze(0) == torch.arange(len(batch), device=self.device).unsqueeze(1)
        contrasts = [("contrast", ~image_question, cfg.contrast_weight)]
        contrasts.append(("image_contrast", image_question, cfg.image.contrast_weight))
        contrasts = [(name, rows, w) for name, rows, w in contrasts if w > 0 and bool(rows.any())]
        with torch.set_grad_enabled(torch.is_grad_enabled() and bool(contrasts)):
            query_keys, item_keys = comp.keys(query_latents), comp.keys(latents)
        if contrasts:
            per_query = multi_positive_infonce(query_keys, item_keys, positive_mask, cfg.temperature, reduction="none")
            for name, rows, weight in contrasts:
                losses[name] = per_query[rows].mean()
                total = total + weight * losses[name]

        count = len(texts) if cfg.recon_negatives else num_pos
        text_rows = [i for i in range(count) if i not in images]
        if cfg.recon_weight > 0 and text_rows:
            ids, mask = comp.tokenize([texts[i] for i in text_rows], comp.config.max_evidence_tokens)
            logits, targets = comp.reconstruction_logits(latents[text_rows], ids, mask)
            losses["recon"] = token_cross_entropy(logits, targets)
            total = total + cfg.recon_weight * losses["recon"]
        titled = [i for i in image_rows if i < count and items[i].title]
        if cfg.image.title_recon_weight > 0 and titled:
            ids, mask = comp.tokenize([items[i].title for i in titled], comp.config.max_evidence_tokens)
            logits, targets = comp.reconstruction_logits(latents[titled], ids, mask)
            losses["title_recon"] = token_cross_entropy(logits, targets)
            total = total + cfg.image.title_recon_weight * losses["title_recon"]
        captioned = [i for i in image_rows if i < count and described_item(items[i])]
        if cfg.image.caption_recon_weight > 0 and captioned:
            ids, mask = comp.tokenize([items[i].text for i in captioned], comp.config.max_evidence_tokens)
            logits, targets = comp.reconstruction_logits(latents[captioned], ids, mask)
            losses["caption_recon"] = token_cross_entropy(logits, targets)
            total = total + cfg.image.caption_recon_weight * losses["caption_recon"]
        if cfg.image.embed_recon_weight > 0 and has_images:
            predicted = comp.image_embed_head(latents[image_rows])
            losses["image_embed"] = embedding_reconstruction_mse(predicted, pooled)
            total = total + cfg.image.embed_recon_weight * losses["image_embed"]

        rng = torch.Generator().manual_seed(step_seed)
        slots = self._student_slots(batch, rng)
        order = torch.tensor([i for row in slots for i in row], dtype=torch.long, device=self.device)
        builders = self.student_builders
        if len(builders) > 1:  # one slot format per question
            picks = torch.randint(0, len(builders), (len(batch),), generator=rng).tolist()
        else:  # no draw: single-format runs keep their random stream
            picks = [0] * len(batch)
        student_prompts = [builders[i].latent(q, len(row)) for i, q, row in zip(picks, batch.questions, slots)]
        projected_items = comp.project(latents)  # [items, G]: one projection serves the student and the paraphrase
        projected = projected_items[order]
        distills = [("distill", ~image_question, cfg.distill_weight)]
        # The teacher reads each image's description: image questions whose positives lack one are left out.
        described = torch.ones_like(image_question)
        for i in image_rows:
            if i < num_pos and not described_item(items[i]):
                described[int(owner_of_positive[i])] = False
        distills.append(("image_distill", image_question & described, cfg.image.distill_weight))
        distills = [(name, rows, w) for name, rows, w in distills if w > 0 and bool(rows.any())]
        if distills:
            answers = self.teacher_answers(batch)
            teacher_prompts = [
                self.prompts.text(q, self._positives_of(batch, b)) for b, q in enumerate(batch.questions)
            ]
            with torch.no_grad():
                teacher, _ = self._reply_logits(teacher_prompts, None, answers)
            student, _ = self._reply_logits(student_prompts, projected, answers)
            lengths = torch.tensor([len(a) for a in answers], device=self.device)
            token_owner = torch.repeat_interleave(torch.arange(len(batch), device=self.device), lengths)
            for name, rows, weight in distills:
                tokens = rows[token_owner]  # [N] answer tokens of the questions this term covers
                losses[name] = distillation_kl(student[tokens], teacher[tokens])
                total = total + weight * losses[name]
        if cfg.answer_weight > 0:
            losses["answer"] = self._reply_cross_entropy(student_prompts, projected, self.gold_answers(batch))
            total = total + cfg.answer_weight * losses["answer"]
        # The generator rebuilds each text positive from its latent, and each image positive as its description.
        rebuilt = [i for i in range(num_pos) if i not in images or described_item(items[i])]
        if cfg.paraphrase_weight > 0 and rebuilt:
            prompts = [self.prompts.latent(PARAPHRASE_INSTRUCTION, 1)] * len(rebuilt)
            replies = [self.reply_tokens(items[i].text if i in images else batch.positives[i]) for i in rebuilt]
            losses["paraphrase"] = self._reply_cross_entropy(prompts, projected_items[rebuilt], replies)
            total = total + cfg.paraphrase_weight * losses["paraphrase"]
        losses["loss"] = total
        with torch.no_grad():  # retrieval quality inside each question's pool: recall@1 of its positives
            scores = query_keys.detach() @ item_keys.detach().T
            in_pool = torch.cat([batch.positive_owner, batch.negative_owner]).to(self.device)
            pool_mask = in_pool.unsqueeze(0) == torch.arange(len(batch), device=self.device).unsqueeze(1)
            best = scores.masked_fill(~pool_mask, float("-inf")).argmax(dim=1)
            losses["recall@1"] = positive_mask.gather(1, best.unsqueeze(1)).float().mean()
        return losses

    # ----------------------------------------------------------------- Lightning hooks

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        # Lightning's default rebuilds every dataclass it finds, and the batch's Evidence items are frozen ones.
        if isinstance(batch, QABatch):
            return batch.to(device)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def unlabelled_reconstruction(self, step_seed: int) -> torch.Tensor:
        """Reconstruction CE of ``loss.unlabelled_per_step`` items of ``data.unlabelled``, drawn without replacement
        with ``step_seed``: text no question asks about, compressed and rebuilt like the batch's own items."""
        count = min(self.config.loss.unlabelled_per_step, len(self.unlabelled))
        rng = torch.Generator().manual_seed(step_seed)
        picks = torch.randperm(len(self.unlabelled), generator=rng)[:count].tolist()
        texts = [self.unlabelled[i] for i in picks]
        comp = self.compressor
        ids, mask = comp.tokenize(texts, comp.config.max_evidence_tokens)
        latents = comp.encode_ids(ids, mask, "compress")
        logits, targets = comp.reconstruction_logits(latents, ids, mask)
        return token_cross_entropy(logits, targets)

    def training_step(self, batch: QABatch, batch_idx: int) -> torch.Tensor:
        step_seed = derive_seed(self.config.seed, TRAIN_STREAM, self.global_step * 97 + batch_idx)
        losses = self.compute_losses(batch, step_seed=step_seed)
        if self.unlabelled:  # training only: validation losses stay comparable with runs that read no unlabelled text
            losses["recon_unlabelled"] = self.unlabelled_reconstruction(step_seed + 1)
            losses["loss"] = losses["loss"] + self.config.loss.recon_weight * losses["recon_unlabelled"]
        for name, value in losses.items():
            self.log(f"train/{name}", value, prog_bar=name in ("loss", "distill"), batch_size=len(batch))
        return losses["loss"]

    def validation_step(self, batch: QABatch, batch_idx: int) -> None:
        losses = self.compute_losses(batch, step_seed=derive_seed(self.config.seed, VAL_STREAM, batch_idx))
        for name, value in losses.items():
            self.log(f"val/{name}", value, prog_bar=name == "loss", batch_size=len(batch))

    def on_train_epoch_start(self) -> None:
        dataset = getattr(self.trainer.datamodule, "train_set", None)
        if dataset is not None:
            dataset.epoch = self.current_epoch

    def configure_optimizers(self) -> dict[str, Any]:
        # Under fsdp the optimizer is made after the layers are wrapped, which puts wrapper names into the paths.
        named = {unwrapped_name(name): p for name, p in self.named_parameters()}
        params = [named[name] for name in sorted(self._trainable)]
        return adamw_warmup_cosine(params, self.config.optim, self.trainer.estimated_stepping_batches)

    def trainable_names(self) -> set[str]:
        """What the optimizer updates: the learned weights of ``compressor.train_parts``. Fixed at construction
        (peft toggles requires_grad when adapters switch)."""
        return set(self._trainable)

    def learned_names(self) -> set[str]:
        """Every learned weight (adapters, slot, heads), trained in this run or not: what checkpoints hold."""
        return set(self._learned)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Frozen base weights are reproducible from the config: keep checkpoints a few MB.
        keep = self.learned_names()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        own = self.state_dict()
        expected = {k: own[k] for k in self.learned_names()}
        check_state_dict(expected, checkpoint.get("state_dict", {}), "checkpoint", "this compressor")


def _unlabelled_texts(config: MemoryExperimentConfig) -> list[str]:
    """The texts of ``data.unlabelled`` (empty when null); an image item there is an error naming it."""
    if not config.data.unlabelled:
        return []
    path = resolve_path(config, "data.unlabelled", config.data.unlabelled)
    items = read_corpus(path)
    for item in items:
        if item.image:
            raise DataError(f"{path}: item '{item.id}' is an image; data.unlabelled is rebuilt as text only")
    return [item.display_text() for item in items]


def build_task(config: MemoryExperimentConfig):
    """`task: latent_memory`: QA batches and the compressor module."""
    from latentlab.data.modules import QADataModule, corpus_of, load_qa_split
    from latentlab.parts import FitParts

    module = LatentMemoryModule(config)
    source = config.compressor.init_from
    if source:
        from latentlab.memory.checkpoint import load_compressor_weights

        path = resolve_path(config, "compressor.init_from", source)
        # A decoder left out of an inference export is fine unless this run reconstructs.
        image = config.loss.image if config.compressor.vision is not None else None
        needs_decoder = config.loss.recon_weight > 0 or bool(
            image and (image.title_recon_weight > 0 or image.caption_recon_weight > 0)
        )
        # So is a reading adapter the earlier stage did not have: it starts where peft starts it (no change).
        load_compressor_weights(
            module,
            path,
            allow_missing_decoder=not needs_decoder,
            allow_missing_reader=True,
            fresh_decoder=config.compressor.init_fresh_decoder,
        )
    rankings = None
    if config.loss.negatives == "mined":
        from latentlab.memory.mining import mine_rankings

        examples = load_qa_split(config, "train") + load_qa_split(config, "val")
        depth = config.loss.hard_negatives + config.data.max_positives
        rankings = mine_rankings(module, examples, corpus_of(config, examples), depth, config.index.batch_size)
    return FitParts(datamodule=QADataModule(config, rankings), module=module)
