"""Image evidence in the same latent space, on tiny random models: one latent per image + title, the image losses,
training on the synthetic image QA, one memory of text and images (its manifest naming the tower), bad images at
build time, token accounting (per item, and the evaluation's ``token_costs`` table)."""

import json
from dataclasses import replace
from pathlib import Path
from statistics import fmean as mean

import pytest
import torch

from latentlab.cli import main
from latentlab.configs import dump_yaml, load_config
from latentlab.data.modules import QADataModule, corpus_of, load_qa_split, synthetic_scenes
from latentlab.data.schema import Evidence, QAExample, merge_evidence, read_corpus
from latentlab.errors import ConfigError, DataError, IndexError_
from latentlab.memory.checkpoint import (
    compressor_fingerprint,
    export_compressor,
    load_model,
    state_fingerprint,
    vision_spec,
)
from latentlab.memory.index import MANIFEST_NAME, LatentIndex
from latentlab.memory.losses import embedding_reconstruction_mse, multi_positive_infonce, token_cross_entropy
from latentlab.memory.module import LatentMemoryModule
from latentlab.memory.pipeline import LatentMemory, build_memory, memory_info, skipped_report_path
from latentlab.memory.vision import image_prefix
from latentlab.training import fit
from tests.conftest import REPO, TINY_LLAMA, TINY_VIT

TINY_YAML = REPO / "paper_configs/tiny/latent_memory_multimodal.yaml"
IMAGE_LOSSES = ("image_contrast", "title_recon", "image_embed", "image_distill")


def tiny_multimodal(tmp: Path, **extra) -> dict:
    """Overrides for a seconds-long run of the multimodal tiny twin: 2-layer random LM and ViT, 30 scenes."""
    return {
        "compressor.backbone.model": TINY_LLAMA,
        "generator.backbone.model": TINY_LLAMA,
        "compressor.key_dim": 32,
        "compressor.vision.model": TINY_VIT,
        "data.synthetic_images.num_scenes": 30,
        "data.synthetic_images.cache_dir": str(tmp / "images"),
        "data.batch_size": 2,
        "data.limit_val": 2,
        "trainer.max_steps": 2,
        "trainer.progress_bar": False,
        "generator.max_new_tokens": 4,
        "loss.distill_tokens": 4,
        # The twin turns the teacher off to save CPU time; the tests keep it, so every image term runs.
        "loss.distill_weight": 1.0,
        "loss.image.distill_weight": 2.0,
        "output_dir": str(tmp / "runs"),
        **extra,
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-step tiny multimodal run and its exported compressor (shared by the tests of this module)."""
    tmp = tmp_path_factory.mktemp("images")
    config = load_config(TINY_YAML, tiny_multimodal(tmp))
    result = fit(config, run_name="mm")
    export_compressor(load_model(result.run_dir), tmp / "export")
    return config, result, tmp


# --------------------------------------------------------------------------- losses on hand-made tensors


def test_embedding_reconstruction_mse_by_hand():
    target = torch.tensor([[1.0, -2.0], [0.5, 3.0]], requires_grad=True)
    assert embedding_reconstruction_mse(target.detach().clone(), target).item() == 0.0
    predicted = torch.tensor([[2.0, -2.0], [0.5, 1.0]], requires_grad=True)
    loss = embedding_reconstruction_mse(predicted, target)
    torch.testing.assert_close(loss, torch.tensor((1.0 + 0 + 0 + 4.0) / 4), atol=1e-6, rtol=0)
    loss.backward()
    torch.testing.assert_close(predicted.grad, torch.tensor([[0.5, 0.0], [0.0, -1.0]]), atol=1e-6, rtol=0)
    assert target.grad is None  # the tower's embedding is a detached target


def test_infonce_per_query_losses_by_hand():
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    items = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    positives = torch.tensor([[True, False, False], [False, True, True]])
    per_query = multi_positive_infonce(queries, items, positives, temperature=1.0, reduction="none")
    e = torch.e
    first = -torch.log(torch.tensor(e / (e + 1 + 1 / e)))
    second = -(torch.log(torch.tensor(e / (1 + e + 1))) + torch.log(torch.tensor(1 / (1 + e + 1)))) / 2
    torch.testing.assert_close(per_query, torch.stack([first, second]), atol=1e-6, rtol=0)
    torch.testing.assert_close(multi_positive_infonce(queries, items, positives, 1.0), per_query.mean())


# --------------------------------------------------------------------------- one latent per image + title


def test_an_image_item_becomes_one_latent_through_the_slot(trained):
    _, _, tmp = trained
    model = load_model(tmp / "export")
    comp = model.compressor
    scenes = list(synthetic_scenes(model.config).scenes.values())[:3]
    with torch.no_grad():
        latents = comp.encode_items(scenes)
        embeds, mask = image_prefix(comp, scenes)
        direct = comp.encode_embeds(embeds, mask, "compress")
        alone = comp.encode_items(scenes[1:2])
        untitled = comp.encode_items([Evidence("x", image=scenes[1].image)])
    assert latents.shape == (3, comp.hidden)
    assert embeds.shape[1] == comp.vision.prefix_tokens + mask[:, comp.vision.prefix_tokens :].sum(1).max()
    torch.testing.assert_close(latents, direct, atol=0, rtol=0)
    torch.testing.assert_close(latents[1], alone[0], atol=1e-5, rtol=0)  # no dependence on the batch
    assert (latents[0] - latents[1]).abs().max() > 1e-4 and (untitled[0] - alone[0]).abs().max() > 1e-4


def test_a_mixed_batch_is_encoded_one_kind_at_a_time_in_input_order(trained):
    _, _, tmp = trained
    model = load_model(tmp / "export")
    scene_set = synthetic_scenes(model.config)
    scenes, facts = list(scene_set.scenes.values())[:2], list(scene_set.facts.values())[:2]
    mixed = [facts[0], scenes[0], facts[1], scenes[1]]
    with torch.no_grad():
        together = model.compressor.encode_items(mixed)
        texts, images = model.compressor.encode_items(facts), model.compressor.encode_items(scenes)
    expected = torch.stack([texts[0], images[0], texts[1], images[1]])
    torch.testing.assert_close(together, expected, atol=1e-5, rtol=0)


def test_export_keeps_the_trained_tower_and_reloads_the_same_latents(trained):
    config, result, tmp = trained
    exported = load_model(tmp / "export")
    state = exported.compressor.trainable_state_dict()
    assert any(k.startswith("vision.tower.") for k in state) and any(k.startswith("image_embed_head.") for k in state)
    scenes = list(synthetic_scenes(config).scenes.values())[:2]
    with torch.no_grad():
        torch.testing.assert_close(
            load_model(result.run_dir).compressor.encode_items(scenes),
            exported.compressor.encode_items(scenes),
            atol=0,
            rtol=0,
        )
    # The vision spec is part of the fingerprint; a text-only compressor's fingerprint has no vision part.
    other = load_config(TINY_YAML, tiny_multimodal(tmp, **{"compressor.vision.projector": "linear"}))
    assert state_fingerprint(other, state) != compressor_fingerprint(exported)


# --------------------------------------------------------------------------- training


def test_fit_trains_on_synthetic_image_qa_with_every_image_loss(trained):
    _, result, _ = trained
    assert result.metrics["global_step"] == 2
    after = result.metrics["val_after"]
    assert {f"val/{name}" for name in ("answer", *IMAGE_LOSSES)} <= set(after)
    # The first validation questions are image questions (the text ones follow them): no text term, and the reader
    # rebuilds each scene's caption (paraphrase).
    assert "val/paraphrase" in after and not {"val/contrast", "val/distill", "val/recon"} & set(after)
    ckpt = torch.load(result.run_dir / "last.ckpt", map_location="cpu", weights_only=False)
    assert any(".vision.projector." in k or k.startswith("compressor.vision.") for k in ckpt["state_dict"])


def test_image_losses_are_weighted_and_reach_the_vision_path(tmp_path):
    config = load_config(TINY_YAML, tiny_multimodal(tmp_path, **{"data.batch_size": 3}))
    module = LatentMemoryModule(config)
    data = QADataModule(config)
    data.setup()
    batch = next(iter(data.train_dataloader()))
    assert any(e.image for e in batch.positive_items) and any(not e.image for e in batch.negative_items)
    losses = module.compute_losses(batch, step_seed=0)
    cfg = config.loss
    weights = {
        "contrast": cfg.contrast_weight,
        "recon": cfg.recon_weight,
        "distill": cfg.distill_weight,
        "answer": cfg.answer_weight,
        "image_contrast": cfg.image.contrast_weight,
        "title_recon": cfg.image.title_recon_weight,
        "image_embed": cfg.image.embed_recon_weight,
        "image_distill": cfg.image.distill_weight,
        "caption_recon": cfg.image.caption_recon_weight,
        "paraphrase": cfg.paraphrase_weight,
    }
    present = [name for name in weights if name in losses]
    assert set(IMAGE_LOSSES) <= set(present)
    expected = sum(weights[name] * losses[name] for name in present)
    torch.testing.assert_close(losses["loss"], expected, atol=1e-5, rtol=0)
    losses["loss"].backward()
    comp = module.compressor
    for part in (comp.vision.projector, comp.vision.pooled_projector, comp.vision.tower, comp.image_embed_head):
        grads = [p.grad for p in part.parameters()]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads), type(part).__name__


def test_an_image_positive_is_rebuilt_as_its_caption_by_the_decoder_and_the_reader(tmp_path):
    overrides = {"loss.image.caption_recon_weight": 1.0, "data.synthetic_images.text_questions": 0.0}
    config = load_config(TINY_YAML, tiny_multimodal(tmp_path, **overrides, **{"data.batch_size": 3}))
    module = LatentMemoryModule(config)
    data = QADataModule(config)
    data.setup()
    batch = next(iter(data.train_dataloader()))
    assert all(e.image for e in batch.positive_items)  # image questions only: before, nothing was paraphrased
    losses = module.compute_losses(batch, step_seed=0)
    assert {"caption_recon", "paraphrase"} <= set(losses)
    comp = module.compressor
    latents, image_rows, _ = module.item_latents(batch)
    with torch.no_grad():
        captions = [batch.positive_items[i].text for i in range(len(batch.positives))]
        ids, mask = comp.tokenize(captions, comp.config.max_evidence_tokens)
        logits, targets = comp.reconstruction_logits(latents[: len(captions)], ids, mask)
    torch.testing.assert_close(losses["caption_recon"], token_cross_entropy(logits, targets), atol=1e-5, rtol=0)
    # An image without a description is rebuilt by neither: there is no caption to read back.
    bare = replace(batch, positive_items=[replace(e, text=None) for e in batch.positive_items])
    assert not {"caption_recon", "paraphrase"} & set(module.compute_losses(bare, step_seed=0))


def test_caption_recon_weight_is_validated(tmp_path):
    with pytest.raises(ConfigError, match="caption_recon_weight"):
        load_config(TINY_YAML, tiny_multimodal(tmp_path, **{"loss.image.caption_recon_weight": -1.0}))


def test_text_runs_keep_their_losses_without_image_terms(tiny_overrides):
    config = load_config(REPO / "paper_configs/tiny/latent_memory_text.yaml", tiny_overrides)
    module = LatentMemoryModule(config)
    data = QADataModule(config)
    data.setup()
    losses = module.compute_losses(next(iter(data.train_dataloader())), step_seed=0)
    assert not set(IMAGE_LOSSES) & set(losses) and {"contrast", "recon", "distill"} <= set(losses)
    assert module.compressor.vision is None and module.compressor.image_embed_head is None


# --------------------------------------------------------------------------- one memory for both


def test_a_mixed_memory_built_and_reopened_gives_the_same_neighbours(trained):
    config, _, tmp = trained
    scene_set = synthetic_scenes(config)
    corpus = [*list(scene_set.scenes.values())[:12], *list(scene_set.facts.values())[:12]]
    corpus = corpus[::2] + corpus[1::2]  # interleaved kinds, so batches mix them
    index = build_memory(tmp / "export", corpus, tmp / "mixed", batch_size=5, progress=False)
    assert index.ids == [e.id for e in corpus]
    questions = [q.question for q in scene_set.questions["train"][:3]] + ["Who made the picture?"]
    memory = LatentMemory.open(tmp / "mixed")
    first = memory.search(questions, k=len(corpus))  # untrained: rank everything, so both modalities come back
    again = LatentMemory.open(tmp / "mixed").search(questions, k=len(corpus))
    assert [[(h.id, h.modality) for h in row] for row in first] == [[(h.id, h.modality) for h in row] for row in again]
    for row, same in zip(first, again):
        assert [h.score for h in row] == pytest.approx([h.score for h in same], abs=1e-6)
    assert all({h.modality for h in row} == {"text", "image"} for row in first)
    for row in first:
        for hit in row:
            assert hit.modality == ("image" if hit.id.startswith("scene:") else "text")
            assert (hit.image is not None) == (hit.modality == "image")
    # The latents stored for the images are the compressor's own (row order and ids kept through kind grouping).
    with torch.no_grad():
        fresh = memory.model.compressor.encode_items(corpus[:4]).numpy()
    stored = LatentIndex.open(tmp / "mixed").latents_for([e.id for e in corpus[:4]])
    assert abs(fresh - stored).max() < 1e-4
    info = memory_info(tmp / "mixed")  # what `latentlab index info` prints
    assert info["modalities"] == {"image": 12, "text": 12} and info["count"] == 24
    assert info["vision"]["model"] == TINY_VIT and info["fingerprint"] == compressor_fingerprint(memory.model)


def test_a_mixed_memory_manifest_names_the_vision_tower_and_older_manifests_still_open(trained, tmp_path):
    config, _, tmp = trained
    scene_set = synthetic_scenes(config)
    corpus = [*list(scene_set.scenes.values())[:3], *list(scene_set.facts.values())[:3]]
    build_memory(tmp / "export", corpus, tmp_path / "m", progress=False)
    tower = vision_spec(load_model(tmp / "export").config)
    assert tower is not None and tower["model"] == TINY_VIT
    manifest_path = tmp_path / "m" / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    assert manifest["vision"] == tower and list(manifest)[:3] == ["format_version", "fingerprint", "vision"]
    reopened = LatentIndex.open(tmp_path / "m")
    assert reopened.vision == tower and reopened.info()["vision"] == tower
    assert memory_info(tmp_path / "m")["vision"] == tower
    reopened.set_search_params(ef_search=8)  # a re-save keeps the tower
    reopened.save()
    assert json.loads(manifest_path.read_text())["vision"] == tower
    # A manifest written before the field (no "vision" key) opens, reads as None, and `index info` falls back to the
    # compressor stored beside the memory.
    older = {key: value for key, value in json.loads(manifest_path.read_text()).items() if key != "vision"}
    manifest_path.write_text(json.dumps(older, indent=2) + "\n")
    assert LatentIndex.open(tmp_path / "m").vision is None
    assert LatentMemory.open(tmp_path / "m").search(["Who made the picture?"], k=2)[0]
    assert memory_info(tmp_path / "m")["vision"] == tower
    manifest_path.write_text(json.dumps({**older, "vision": "ViT-L-14"}))
    with pytest.raises(IndexError_, match=r"manifest\.json: malformed field 'vision'.*\"ViT-L-14\""):
        LatentIndex.open(tmp_path / "m")


def test_index_build_skip_bad_builds_the_rest_and_reports(trained, tmp_path, capsys):
    config, _, tmp = trained
    scenes = list(synthetic_scenes(config).scenes.values())[:3]
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nshort")
    lines = [
        {"id": "fact-1", "text": "The picture of Velmora Square was made by Tiviodrox."},
        {"id": scenes[0].id, "image": scenes[0].image, "title": scenes[0].title},
        {"id": "gone", "image": "missing.png", "title": "Gone"},
        {"id": scenes[1].id, "image": scenes[1].image, "title": scenes[1].title, "text": scenes[1].text},
        {"id": "broken", "image": "broken.png"},
    ]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(line) + "\n" for line in lines))
    yaml_path = tmp_path / "config.yaml"
    yaml_path.write_text(dump_yaml(config))
    args = ["index", "build", str(yaml_path), "--corpus", str(corpus), "--checkpoint", str(tmp / "export")]
    out = tmp_path / "memory"
    assert main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{corpus}:3" in err and "'gone'" in err and "missing.png" in err and "--skip-bad" in err
    assert not out.exists()  # nothing was written
    assert main([*args, "--out", str(out), "--skip-bad"]) == 0
    assert "skipped 2 bad image item(s)" in capsys.readouterr().out
    report = [json.loads(line) for line in skipped_report_path(out).read_text().splitlines()]
    assert [(r["id"], r["where"]) for r in report] == [("gone", f"{corpus}:3"), ("broken", f"{corpus}:5")]
    assert "truncated or damaged" in report[1]["error"]
    memory = LatentIndex.open(out)
    assert memory.ids == ["fact-1", scenes[0].id, scenes[1].id]
    # A finished memory is never touched by a later build that meets bad images.
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert main([*args, "--out", str(out)]) == 2
    assert before == {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}


def test_a_corpus_of_only_bad_images_is_refused(trained, tmp_path):
    _, _, tmp = trained
    items = read_corpus(_write(tmp_path / "c.jsonl", '{"id": "a", "image": "nope.png"}\n'))
    with pytest.raises(DataError, match=r"c\.jsonl:1: evidence 'a'.*no such file"):
        build_memory(tmp / "export", items, tmp_path / "m", progress=False)
    with pytest.raises(DataError, match="no item of the corpus is usable"):
        build_memory(tmp / "export", items, tmp_path / "m", progress=False, skip_bad=True)
    assert not (tmp_path / "m").exists()


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- token accounting


def test_token_accounting_compares_a_latent_with_patches_and_the_description(trained):
    config, _, tmp = trained
    model = load_model(tmp / "export")
    scene = next(iter(synthetic_scenes(config).scenes.values()))
    fact = Evidence("f", text="The picture of Velmora Square was made by Tiviodrox.")
    image_cost, text_cost = model.item_costs([scene, fact])
    builder = model.prompt_builder("paper")
    assert image_cost.latent == text_cost.latent == builder.latent("?", 1).context_tokens
    title = builder.text("?", [f"Title: {scene.title}"]).context_tokens
    assert (image_cost.modality, image_cost.vlm_image) == ("image", title + model.compressor.vision.num_patches)
    assert image_cost.raw_text == builder.text("?", [scene.display_text()]).context_tokens > image_cost.latent
    assert (text_cost.modality, text_cost.vlm_image) == ("text", None)
    undescribed = model.item_costs([Evidence("u", image=scene.image)])[0]
    assert undescribed.raw_text is None and undescribed.vlm_image > model.compressor.vision.num_patches


@pytest.mark.parametrize("retrieval", ["pool", "global"])
def test_evaluate_reads_image_latents_beside_the_raw_description_baseline(trained, retrieval):
    from latentlab.memory.evaluate import evaluate

    config, _, tmp = trained
    config.eval.limit = 2
    out = tmp / f"eval-{retrieval}"
    result = evaluate(config, tmp / "export", out, methods=["latent", "bm25"], retrieval=retrieval)
    latent, bm25 = result.rows
    assert latent["context_tokens"] < bm25["context_tokens"]  # one latent a hit against each description's tokens
    records = [json.loads(line) for line in (out / "predictions.latent.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(set(h) == {"id", "score"} for r in records for h in r["hits"])
    # The token accounting of the evaluated items, each count measured here on its own with the generator's prompts.
    examples = load_qa_split(config, config.eval.split, training_limits=False)[:2]
    items = corpus_of(config, examples) if retrieval == "global" else list(merge_evidence(examples).values())
    model = load_model(tmp / "export")
    builder, patches = model.prompt_builder("paper"), model.compressor.vision.num_patches
    images, texts = [e for e in items if e.image], [e for e in items if not e.image]
    assert patches == 16 and images and texts  # a 32 px image in 8 px patches
    slot = builder.latent("?", 1).context_tokens
    titles = [builder.text("?", [f"Title: {e.title}"]).context_tokens for e in images]
    described = [builder.text("?", [e.display_text()]).context_tokens for e in images if e.text]
    text_raw = [builder.text("?", [e.display_text()]).context_tokens for e in texts]
    text_row, image_row = result.token_costs
    assert text_row == {
        "modality": "text",
        "items": len(texts),
        "latent_tokens": slot,
        "raw_text_tokens": pytest.approx(mean(text_raw), abs=1e-9),
        "described_items": len(texts),
        "tower_patches": None,
        "vlm_tower_tokens": None,
        "vlm_llava15_tokens": None,
        "raw_text_per_latent": pytest.approx(mean(text_raw) / slot, abs=1e-9),
        "vlm_tower_per_latent": None,
        "vlm_llava15_per_latent": None,
    }
    vlm = mean(titles) + patches
    assert image_row == {
        "modality": "image",
        "items": len(images),
        "latent_tokens": slot,
        "raw_text_tokens": pytest.approx(mean(described), abs=1e-9) if described else None,
        "described_items": len(described),
        "tower_patches": patches,
        "vlm_tower_tokens": pytest.approx(vlm, abs=1e-9),
        "vlm_llava15_tokens": pytest.approx(mean(titles) + 576, abs=1e-9),
        "raw_text_per_latent": pytest.approx(mean(described) / slot, abs=1e-9) if described else None,
        "vlm_tower_per_latent": pytest.approx(vlm / slot, abs=1e-9),
        "vlm_llava15_per_latent": pytest.approx((mean(titles) + 576) / slot, abs=1e-9),
    }
    costs = model.item_costs(images[:1])[0]  # one latent slot against the tower's patches + title tokens
    assert (costs.latent, costs.vlm_image) == (slot, patches + titles[0])
    assert json.loads((out / "summary.json").read_text())["token_costs"] == result.token_costs
    table = (out / "token_costs.md").read_text()
    assert f"tower ({patches} patches)" in table and "LLaVA-1.5 (CLIP ViT-L/14-336, 576 patches)" in table
    assert (out / "token_costs.csv").read_text().splitlines()[0].startswith("modality,items,latent_tokens,")


def test_without_images_keeps_a_titled_image_as_its_title_and_drops_an_untitled_one():
    from latentlab.memory.evaluate import without_images

    text = Evidence("t", "The picture of Ada was made by Bo.")
    assert without_images(text) is text
    titled = without_images(Evidence("s", "A red circle.", image="s.png", title="Ada"))
    assert titled == Evidence("s", "Title: Ada") and not titled.image
    assert without_images(Evidence("u", "A red circle.", image="u.png")) is None


@pytest.mark.parametrize("retrieval", ["pool", "global"])
def test_the_no_images_control_reads_the_same_memory_with_titles_in_place_of_pictures(trained, retrieval):
    from latentlab.memory.evaluate import evaluate

    config, _, tmp = trained
    config.eval.limit = 3
    out = tmp / f"eval-no-images-{retrieval}"
    result = evaluate(config, tmp / "export", out, methods=["latent", "latent_no_images"], retrieval=retrieval)
    assert [r["method"] for r in result.rows] == ["latent", "latent_no_images"]
    records = [json.loads(line) for line in (out / "predictions.latent_no_images.jsonl").read_text().splitlines()]
    examples = load_qa_split(config, config.eval.split, training_limits=False)[:3]
    pools = corpus_of(config, examples) if retrieval == "global" else list(merge_evidence(examples).values())
    known = {e.id for e in pools}
    assert len(records) == 3 and all(h["id"] in known for r in records for h in r["hits"])
    if retrieval == "pool":  # 5 of a pool of 4 scenes and 3 facts: the scenes' titles are still there
        assert any(h["id"].startswith("scene:") for r in records for h in r["hits"])
    control = [d for d in result.differences if d.get("baseline") == "latent_no_images"]
    assert [d["method"] for d in control] == ["latent"]


def test_majority_answers_take_each_types_most_frequent_answer_with_ties_sorted():
    from latentlab.memory.evaluate import majority_answers

    def q(answer, kind):
        return QAExample(f"q{answer}{kind}", "?", [answer], [Evidence("e", "x")], ["e"], question_type=kind)

    train = [q("True", "nlvr"), q("true", "nlvr"), q("false", "nlvr"), q("two", "count"), q("one", "count")]
    assert majority_answers(train) == {None: "True", "nlvr": "True", "count": "one"}  # count: a tie, sorted first
    with pytest.raises(DataError, match="training split has none"):
        majority_answers([])


def test_the_majority_row_answers_from_the_training_split_without_a_model(trained):
    from latentlab.memory.evaluate import evaluate, majority_answers

    config, _, tmp = trained
    config.eval.limit = 4
    out = tmp / "eval-majority"
    result = evaluate(config, tmp / "export", out, methods=["majority"])
    majority = majority_answers(load_qa_split(config, "train", training_limits=False))
    records = [json.loads(line) for line in (out / "predictions.majority.jsonl").read_text().splitlines()]
    examples = load_qa_split(config, config.eval.split, training_limits=False)[:4]
    assert [r["answer"] for r in records] == [majority[ex.question_type] for ex in examples]
    assert result.rows[0]["context_tokens"] == 0 and all(r["hits"] == [] for r in records)


def test_image_sensitivity_separates_the_picture_from_the_title(trained, tmp_path, capsys):
    import importlib.util

    from latentlab.eval.probe import image_sensitivity

    config, _, tmp = trained
    model = load_model(tmp / "export")
    scenes = [e for e in synthetic_scenes(config).scenes.values()][:6]
    result = image_sensitivity(model.compressor, scenes, batch_size=4)
    assert result.images == 6 and result.picture_swap > 0 and result.title_swap > 0 and result.pooled_std > 0
    assert -1.0 <= result.picture_swap_cosine <= 1.0 + 1e-6
    # The same picture under every item: a picture swap changes nothing.
    same = [replace(e, image=scenes[0].image) for e in scenes]
    assert image_sensitivity(model.compressor, same).picture_swap == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(ConfigError, match="at least 2 image items"):
        image_sensitivity(model.compressor, scenes[:1])
    # The script: a table that names its command, refused the second time.
    spec = importlib.util.spec_from_file_location(
        "experiments_image_sensitivity", REPO / "experiments/image_sensitivity.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    yaml_path = tmp_path / "config.yaml"
    yaml_path.write_text(dump_yaml(config))
    argv = [str(yaml_path), "--checkpoint", str(tmp / "export"), "--limit", "5", "--results-dir", str(tmp_path / "p")]
    assert script.main(argv) == 0
    table = (tmp_path / "p" / f"{config.name}_image_sensitivity.md").read_text()
    assert "python experiments/image_sensitivity.py" in table and "picture_swap" in table
    assert "a picture swap moves a latent by" in capsys.readouterr().out
    assert script.main(argv) == 2 and "--overwrite" in capsys.readouterr().err
