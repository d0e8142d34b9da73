"""End-to-end fit on tiny random models: run records, small checkpoints, and exact resume."""

import json

import lightning as L
import pytest
import torch
import yaml

from latentlab.configs import load_config
from latentlab.errors import ConfigError
from latentlab.optim import TRAIN_STREAM, derive_seed, warmup_cosine
from latentlab.training import fit
from tests.conftest import REPO

TINY_YAML = REPO / "paper_configs/tiny/latent_memory_text.yaml"


class Capture(L.Callback):
    """Records the global step and the optimizer state when training (re)starts."""

    def on_train_start(self, trainer, pl_module):
        self.step = trainer.global_step
        self.state = {k: v.clone() if torch.is_tensor(v) else v for k, v in _flat_state(trainer.optimizers[0]).items()}


LOSS_NAMES = ("recon", "contrast", "distill", "answer", "paraphrase")


def assert_weighted_sum(losses: dict, weights) -> None:
    """``losses`` holds exactly the losses whose weight is above zero, and ``loss`` is their weighted sum."""
    active = [name for name in LOSS_NAMES if getattr(weights, f"{name}_weight") > 0]
    assert [name for name in LOSS_NAMES if name in losses] == active
    expected = sum(getattr(weights, f"{name}_weight") * losses[name] for name in active)
    torch.testing.assert_close(losses["loss"], torch.as_tensor(expected, dtype=losses["loss"].dtype))


def _flat_state(optimizer):
    out = {}
    for pid, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            out[f"{pid}.{key}"] = value
    return out


def test_fit_writes_run_records_and_resumes_exactly(tiny_overrides):
    config = load_config(TINY_YAML, tiny_overrides)
    first = fit(config, run_name="a")
    run = first.run_dir
    assert first.metrics["global_step"] == 4
    written = yaml.safe_load((run / "config.yaml").read_text())
    assert written["trainer"]["max_steps"] == 4 and written["compressor"]["key_dim"] == 32
    info = json.loads((run / "run.json").read_text())
    assert info["seed"] == config.seed and info["git_commit"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"val/recon", "val/contrast", "val/distill"} <= set(metrics["val_before"]) <= set(metrics["val_after"])
    assert (run / "logs" / "metrics.csv").exists()

    ckpt = torch.load(run / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 4
    assert all(("lora_" in k) or k.startswith("compressor.") for k in ckpt["state_dict"])
    assert not any("embed_tokens" in k for k in ckpt["state_dict"])  # frozen base weights are not stored

    capture = Capture()
    resumed_config = load_config(TINY_YAML, {**tiny_overrides, "trainer.max_steps": 6})
    second = fit(resumed_config, resume=run, callbacks=[capture])
    assert capture.step == 4
    saved = {}
    for pid, state in ckpt["optimizer_states"][0]["state"].items():
        for key, value in state.items():
            saved[f"{pid}.{key}"] = value
    assert saved.keys() == capture.state.keys()
    for key, value in saved.items():
        torch.testing.assert_close(capture.state[key], value, atol=0, rtol=0)
    assert second.metrics["global_step"] == 6

    # Fitting again under the same run name is refused before anything in the run directory is touched.
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    with pytest.raises(ConfigError, match=r"already holds a run.*--resume"):
        fit(config, run_name="a")
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before


def test_warmup_cosine_values():
    f = warmup_cosine(warmup_steps=2, total_steps=6, floor=0.1)
    assert [round(f(s), 6) for s in range(7)] == [
        0.5,
        1.0,
        1.0,
        round(0.1 + 0.9 * 0.5 * (1 + 0.7071067811865476), 6),
        0.55,
        round(0.1 + 0.9 * 0.5 * (1 - 0.7071067811865476), 6),
        0.1,
    ]


def test_one_step_reaches_every_trainable_part(tiny_overrides):
    """All three adapters, the memory slot, the retrieval head and the projector get gradients from one step."""
    from latentlab.data.modules import QADataModule
    from latentlab.memory.module import LatentMemoryModule

    config = load_config(TINY_YAML, {**tiny_overrides, "loss.paraphrase_weight": 0.3})
    data = QADataModule(config)
    data.setup("fit")
    module = LatentMemoryModule(config)
    batch = next(iter(data.train_dataloader()))
    losses = module.compute_losses(batch, step_seed=0)
    assert all(torch.isfinite(v) for v in losses.values())
    weights = config.loss
    assert weights.answer_weight > 0  # the tiny config trains on gold answers too
    names = ("recon", "contrast", "distill", "answer", "paraphrase")
    expected = sum(getattr(weights, f"{name}_weight") * losses[name] for name in names)
    torch.testing.assert_close(losses["loss"], expected)
    gold = module.gold_answers(batch)[0]
    assert gold[-1] == module.generator.tokenizer.eos_token_id
    assert module.generator.tokenizer.decode(gold[:-1]).strip() == batch.answers[0][0]
    losses["loss"].backward()
    named = dict(module.named_parameters())
    groups = {
        "compress": [n for n in module.trainable_names() if ".compress." in n],
        "query": [n for n in module.trainable_names() if ".query." in n],
        "decode": [n for n in module.trainable_names() if ".decode." in n],
        "slot": ["compressor.memory_slot"],
        "head": [n for n in module.trainable_names() if "retrieval_head" in n],
        "projector": [n for n in module.trainable_names() if "projector" in n],
    }
    for group, names in groups.items():
        assert names, group
        # LoRA A gets no gradient while B is still zero (peft's init), so check the group as a whole.
        assert any(named[n].grad is not None and named[n].grad.abs().sum() > 0 for n in names), group


def test_student_reads_both_slot_formats_when_configured(tiny_overrides):
    """loss.student_slot_formats: each question's student prompt is drawn from the formats named, seeded by step."""
    from latentlab.data.modules import QADataModule
    from latentlab.memory.module import LatentMemoryModule
    from latentlab.memory.prompting import LATENT

    config = load_config(TINY_YAML, {**tiny_overrides, "loss.student_slot_formats": ["paper", "compact"]})
    module = LatentMemoryModule(config)
    assert [b.slot_format for b in module.student_builders] == ["paper", "compact"]
    assert [b.slot_format for b in LatentMemoryModule(load_config(TINY_YAML, tiny_overrides)).student_builders] == [
        "paper"
    ]
    data = QADataModule(config)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    seen = set()
    compact_header = module.student_builders[1].latent("q", 2).ids
    captured = []
    original = module._reply_cross_entropy
    module._reply_cross_entropy = lambda prompts, *rest: captured.extend(prompts) or original(prompts, *rest)
    for seed in range(12):
        assert_weighted_sum(module.compute_losses(batch, step_seed=seed), config.loss)
    for prompt in captured:  # compact: the latent slots sit back to back
        slots = [i for i, t in enumerate(prompt.ids) if t == LATENT]
        seen.add("compact" if len(slots) > 1 and slots == list(range(slots[0], slots[0] + len(slots))) else "paper")
    assert LATENT in compact_header and seen == {"paper", "compact"}
    with pytest.raises(ConfigError, match="loss.student_slot_formats"):
        load_config(TINY_YAML, {**tiny_overrides, "loss.student_slot_formats": ["labels"]})


def test_mined_negatives_are_what_the_global_memory_ranks_next(tiny_overrides):
    """loss.negatives: mined ranks the whole corpus per question with the starting compressor (FAISS flat IP); the
    dataset's negatives are the best non-supporting items in rank order, and the ranking equals brute force."""
    from latentlab.data.modules import QADataModule, corpus_of, load_qa_split
    from latentlab.memory.mining import mine_rankings
    from latentlab.memory.module import LatentMemoryModule

    config = load_config(TINY_YAML, {**tiny_overrides, "loss.hard_negatives": 3})
    module = LatentMemoryModule(config)
    examples = load_qa_split(config, "train")[:6]
    corpus = corpus_of(config, examples)
    rankings = mine_rankings(module, examples, corpus, depth=7, batch_size=16, progress=False)
    texts = list(dict.fromkeys(e.display_text() for e in corpus))
    module.eval()
    with torch.no_grad():
        items = module.compressor.keys(module.compressor.encode_evidence(texts))
        queries = module.compressor.keys(module.compressor.encode_queries([e.question for e in examples]))
    all_scores = queries @ items.T
    brute = all_scores.topk(7, dim=1)
    position = {t: i for i, t in enumerate(texts)}
    for q, (example, scores, row) in enumerate(zip(examples, brute.values, brute.indices.tolist())):
        mined = rankings[example.id]
        assert len(mined) == 7
        for j, text in enumerate(mined):  # the same items in the same order, up to exact ties
            assert text == texts[row[j]] or abs(float(all_scores[q, position[text]] - scores[j])) < 1e-5
    assert len(QADataModule(config, rankings).rankings) == len(examples)
    from latentlab.data.modules import QADataset

    dataset = QADataset(examples, 3, 4, 0, rankings)
    for index, example in enumerate(examples):
        item = dataset[index]
        supporting = {e.display_text() for e in example.supporting_evidence()}
        expected = [t for t in rankings[example.id] if t not in supporting][:3]
        assert item.negatives == expected
        assert item.negative_rank == [rankings[example.id].index(t) for t in expected]
        for text, rank in zip(item.positives, item.positive_rank):
            ranking = rankings[example.id]
            assert rank == ranking.index(text) if text in ranking else rank >= len(ranking)
    with pytest.raises(Exception, match="no mined ranking"):
        QADataset(examples, 3, 4, 0, {})


def test_student_reads_the_retrieved_top_k_in_rank_order(tiny_overrides):
    """loss.student_context: retrieved: eval.k items, positives always among them, in mined rank order; without
    mined negatives the config is refused, naming the key."""
    from latentlab.data.modules import QADataset, collate_qa, load_qa_split
    from latentlab.memory.module import LatentMemoryModule

    overrides = {**tiny_overrides, "loss.negatives": "mined", "loss.student_context": "retrieved"}
    config = load_config(TINY_YAML, {**overrides, "loss.hard_negatives": 6, "eval.k": 3})
    module = LatentMemoryModule(config)
    examples = load_qa_split(config, "train")[:4]
    # A hand-made ranking: the supporting facts sit at ranks 2 and 4 (or beyond the ranking for the second).
    rankings = {}
    for n, example in enumerate(examples):
        others = [e.display_text() for e in example.negative_evidence()]
        support = [e.display_text() for e in example.supporting_evidence()]
        ranking = others[:2] + support[:1] + others[2:3] + (support[1:2] if n % 2 else []) + others[3:6]
        rankings[example.id] = ranking
    batch = collate_qa([QADataset(examples, 6, 4, 0, rankings)[i] for i in range(len(examples))])
    texts = batch.positives + batch.negatives
    slots = module._student_slots(batch, torch.Generator().manual_seed(0))
    for b, (example, row) in enumerate(zip(examples, slots)):
        ranking = rankings[example.id]
        read = [texts[i] for i in row]
        own = [t for t, o in zip(batch.positives, batch.positive_owner.tolist()) if o == b]
        assert set(own) <= set(read) and len(read) == max(3, len(own))
        ranks = [ranking.index(t) if t in ranking else len(ranking) for t in read]
        assert ranks == sorted(ranks)
        negatives = [t for t in read if t not in own]
        assert negatives == [t for t in ranking if t not in own][: len(negatives)]
    assert_weighted_sum(module.compute_losses(batch, step_seed=0), config.loss)
    with pytest.raises(ConfigError, match="loss.student_context"):
        load_config(TINY_YAML, {**tiny_overrides, "loss.student_context": "retrieved"})


def test_mined_fit_runs_from_build_task(tiny_overrides):
    """A projector-only stage with mined negatives: build_task mines before training and the corpus latents are
    cached (the compress adapter is frozen), so the fit computes none of them again."""
    from latentlab.memory.module import build_task

    overrides = {**tiny_overrides, "loss.negatives": "mined", "loss.student_context": "retrieved"}
    overrides |= {"compressor.train_parts": ["projector"], "loss.recon_weight": 0.0, "loss.contrast_weight": 0.0}
    config = load_config(TINY_YAML, {**overrides, "loss.distill_weight": 0.0, "loss.hard_negatives": 4})
    task = build_task(config)
    assert task.datamodule.rankings and all(
        len(r) == 4 + config.data.max_positives for r in task.datamodule.rankings.values()
    )
    cached = len(task.module.frozen_latents)
    assert cached > 0
    task.datamodule.setup("fit")
    batch = next(iter(task.datamodule.train_dataloader()))
    assert batch.negative_rank is not None
    losses = task.module.compute_losses(batch, 0)
    assert_weighted_sum(losses, config.loss)  # the projector stage: the gold-answer CE alone
    assert [name for name in LOSS_NAMES if name in losses] == ["answer"]
    assert len(task.module.frozen_latents) == cached  # nothing new: every corpus text and question was mined


def test_unlabelled_text_is_rebuilt_each_training_step(tiny_overrides, tmp_path):
    """data.unlabelled + loss.unlabelled_per_step: a seeded draw of that corpus is compressed and rebuilt in each
    training step, weighted by recon_weight; validation losses do not read it."""
    from latentlab.data.modules import QADataModule
    from latentlab.data.schema import Evidence, write_jsonl
    from latentlab.memory.module import LatentMemoryModule

    corpus = tmp_path / "unlabelled.jsonl"
    write_jsonl(corpus, [Evidence(id=f"u{i}", text=f"Sentence number {i} is about the river Ouse.") for i in range(6)])
    overrides = {**tiny_overrides, "data.unlabelled": str(corpus), "loss.unlabelled_per_step": 2}
    config = load_config(TINY_YAML, overrides)
    module = LatentMemoryModule(config)
    assert len(module.unlabelled) == 6
    first, again, other = (module.unlabelled_reconstruction(seed) for seed in (5, 5, 6))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first.item() > 0
    first.backward()
    grads = [p.grad for n, p in module.named_parameters() if ".compress." in n and p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    data = QADataModule(config)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    logged = {}
    module.log = lambda name, value, **kwargs: logged.__setitem__(name, value)
    with torch.no_grad():
        total = module.training_step(batch, 0)
        module.log = lambda *args, **kwargs: None
        plain = module.compute_losses(batch, step_seed=derive_seed(config.seed, TRAIN_STREAM, 0))
    assert "recon_unlabelled" not in plain  # validation (compute_losses alone) never reads the unlabelled text
    expected = plain["loss"] + config.loss.recon_weight * logged["train/recon_unlabelled"]
    torch.testing.assert_close(total, expected)


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"loss.unlabelled_per_step": 2}, "loss.unlabelled_per_step"),
        ({"data.unlabelled": "u.jsonl"}, "data.unlabelled"),
        ({"data.unlabelled": "u.jsonl", "loss.unlabelled_per_step": 2, "loss.recon_weight": 0.0}, "recon_weight"),
        ({"data.unlabelled": "u.jsonl", "loss.unlabelled_per_step": -1}, "unlabelled_per_step"),
    ],
)
def test_unlabelled_settings_that_would_be_ignored_are_refused(tiny_overrides, overrides, key):
    with pytest.raises(ConfigError, match=key):
        load_config(TINY_YAML, {**tiny_overrides, **overrides})
