"""Trained compressor -> memory -> search/answer, and evaluation tables, on tiny random models."""

import json
from pathlib import Path

import pytest
import torch

from latentlab.configs import load_config
from latentlab.data.modules import load_qa_split
from latentlab.data.synthetic import generate_world
from latentlab.errors import IndexError_
from latentlab.eval.metrics import exact_match, token_f1
from latentlab.memory.checkpoint import export_compressor, load_model
from latentlab.memory.evaluate import evaluate
from latentlab.memory.pipeline import LatentMemory, build_memory
from latentlab.training import fit
from tests.conftest import REPO, shared_file

TINY_YAML = REPO / "paper_configs/tiny/latent_memory_text.yaml"
TINY_MODEL = {"tiny": {"layers": 2, "hidden": 64, "heads": 4}}


def two_step_run(tmp: Path) -> dict:
    """Overrides for a 2-step fit of the tiny config on 2-layer random models, writing under ``tmp``."""
    return {
        "compressor.backbone.model": TINY_MODEL,
        "generator.backbone.model": TINY_MODEL,
        "compressor.key_dim": 32,
        "data.synthetic.num_people": 30,
        "data.batch_size": 2,
        "data.limit_val": 2,
        "trainer.max_steps": 2,
        "trainer.progress_bar": False,
        "generator.max_new_tokens": 4,
        "output_dir": str(tmp / "runs"),
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-step tiny run and its exported compressor (shared by the tests of this module)."""
    tmp = tmp_path_factory.mktemp("pipeline")
    config = load_config(TINY_YAML, {**two_step_run(tmp), "eval.output_dir": str(tmp / "results")})
    run = fit(config, run_name="p").run_dir
    module = load_model(run)
    export_compressor(module, tmp / "export")
    return config, run, tmp


def test_export_reload_gives_identical_latents(trained):
    config, run, tmp = trained
    a, b = load_model(run), load_model(tmp / "export")
    texts = ["Ann was born in Oslo.", "Bo is a pilot."]
    with torch.no_grad():
        torch.testing.assert_close(
            a.compressor.encode_evidence(texts), b.compressor.encode_evidence(texts), atol=0, rtol=0
        )


def test_build_search_answer_and_reopen(trained):
    config, run, tmp = trained
    corpus = generate_world(num_people=30, seed=0).corpus()[:40]
    index = build_memory(tmp / "export", corpus, tmp / "memory", batch_size=16, progress=False)
    assert len(index) == 40
    memory = LatentMemory.open(tmp / "memory")
    question = "Where was somebody born?"
    hits = memory.search(question, k=3)
    assert len(hits) == 3 and hits[0].score >= hits[1].score >= hits[2].score
    again = LatentMemory.open(tmp / "memory").search(question, k=3)
    assert [h.id for h in hits] == [h.id for h in again]
    answer = memory.answer(question, k=3)
    assert isinstance(answer.answer, str) and [h.id for h in answer.hits] == [h.id for h in hits]
    # 3 latents with the paper's labels, plus the labels themselves
    assert answer.context_tokens > 3 and answer.prompt_tokens > answer.context_tokens


def test_memory_opened_as_shards_searches_like_one_memory(trained):
    config, run, tmp = trained
    corpus = generate_world(num_people=30, seed=0).corpus()[:40]
    build_memory(tmp / "export", corpus, tmp / "whole", batch_size=16, progress=False)
    build_memory(tmp / "export", corpus[:25], tmp / "shard-a", batch_size=16, progress=False)
    build_memory(tmp / "export", corpus[25:], tmp / "shard-b", batch_size=16, progress=False)
    questions = ["Where was somebody born?", "Who is a pilot?"]
    whole = LatentMemory.open(tmp / "whole").search(questions, k=5)
    sharded = LatentMemory.open([tmp / "shard-a", tmp / "shard-b"])
    hits = sharded.search(questions, k=5)
    assert [[h.id for h in row] for row in hits] == [[h.id for h in row] for row in whole]
    for row, expected in zip(hits, whole):
        assert [h.score for h in row] == pytest.approx([h.score for h in expected], abs=1e-5)
    answer = sharded.answer(questions[0], k=3)
    assert [h.id for h in answer.hits] == [h.id for h in hits[0][:3]]


def test_memory_refuses_another_compressor(trained):
    config, run, tmp = trained
    corpus = generate_world(num_people=30, seed=0).corpus()[:10]
    build_memory(tmp / "export", corpus, tmp / "memory2", batch_size=8, progress=False)
    other = load_model(tmp / "export")
    with torch.no_grad():
        other.compressor.memory_slot.add_(0.1)  # a different compressor
    export_compressor(other, tmp / "other")
    before = {p.name: p.read_bytes() for p in (tmp / "memory2").iterdir() if p.is_file()}
    with pytest.raises(IndexError_, match="fingerprint|built with compressor"):
        LatentMemory.open(tmp / "memory2", compressor=tmp / "other")
    with pytest.raises(IndexError_, match="built with compressor"):
        build_memory(tmp / "other", corpus, tmp / "memory2", progress=False)
    after = {p.name: p.read_bytes() for p in (tmp / "memory2").iterdir() if p.is_file()}
    assert before == after


@pytest.mark.parametrize("retrieval", ["pool", "global"])
def test_evaluate_writes_predictions_summary_and_table(trained, retrieval):
    config, run, tmp = trained
    config.eval.limit = 2
    out = tmp / f"eval-{retrieval}"
    methods = ["latent", "latent_shuffled", "no_retrieval"]
    result = evaluate(config, checkpoint=tmp / "export", out_dir=out, methods=methods, retrieval=retrieval)
    assert [row["method"] for row in result.rows] == methods
    latent, _, none = result.rows
    read = [json.loads(line) for line in (out / "predictions.latent.jsonl").read_text().splitlines()]
    shuffled = [json.loads(line) for line in (out / "predictions.latent_shuffled.jsonl").read_text().splitlines()]
    assert [r["hits"] for r in shuffled] == [read[1]["hits"], read[0]["hits"]]  # each reads the next one's latents
    assert [r["id"] for r in shuffled] == [r["id"] for r in read]
    # Recall@k and Precision@k by hand from the records: top-k hit ids against each question's supporting ids.
    k = config.eval.k
    found = [len({h["id"] for h in r["hits"][:k]} & set(r["supporting"])) for r in read]
    recall = sum(f / len(set(r["supporting"])) for f, r in zip(found, read)) / len(read)
    assert latent["recall@k"] == pytest.approx(recall, abs=1e-6, rel=0) and "recall@k" not in none
    assert latent["precision@k"] == pytest.approx(sum(found) / (k * len(read)), abs=1e-6, rel=0)
    assert latent["context_tokens"] > 0 and none["context_tokens"] == 0
    lines = (out / "predictions.latent.jsonl").read_text().splitlines()
    assert len(lines) == 2 and "answer" in json.loads(lines[0])
    assert json.loads((out / "summary.json").read_text())["retrieval"] == retrieval
    assert (out / "table.md").exists() and (out / "table.csv").exists() and (out / "table.png").exists()


def test_evaluate_runs_on_real_hotpotqa_by_config(trained):
    """The HotpotQA config (official dev-distractor JSON, per-question pools) evaluates end to end."""
    _, _, tmp = trained
    shared_file("hotpotqa/hotpot_dev_distractor_shared.json")
    models = {"compressor.backbone.model": TINY_MODEL, "generator.backbone.model": TINY_MODEL}
    hotpot = load_config(
        REPO / "paper_configs/tiny/latent_memory_hotpotqa.yaml",
        {**models, "compressor.key_dim": 32, "generator.max_new_tokens": 4, "eval.limit": 2},
    )
    out = tmp / "eval-hotpotqa"
    result = evaluate(hotpot, checkpoint=tmp / "export", out_dir=out, methods=["latent", "bm25", "full_context"])
    latent, bm25, full = result.rows
    assert latent["context_tokens"] * 5 < bm25["context_tokens"] < full["context_tokens"]
    assert "recall@k" in bm25 and "recall@k" not in full  # full context ranks nothing
    first = json.loads((out / "predictions.latent.jsonl").read_text().splitlines()[0])
    assert first["gold"] and first["supporting"] and len(first["hits"]) == 5
    assert json.loads((out / "summary.json").read_text())["retrieval"] == "pool"


def test_notebook_executes(trained, monkeypatch):
    """notebooks/serve_retrieval.ipynb runs top to bottom against a memory built here."""
    import nbformat
    from nbclient import NotebookClient

    config, run, tmp = trained
    corpus = generate_world(num_people=30, seed=0).corpus()
    build_memory(tmp / "export", corpus, tmp / "nb-memory", batch_size=32, progress=False)
    monkeypatch.setenv("LATENTLAB_MEMORY", str(tmp / "nb-memory"))
    monkeypatch.setenv("LATENTLAB_PLOT", str(tmp / "nb.png"))
    notebook = nbformat.read(REPO / "notebooks/serve_retrieval.ipynb", as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp)}}).execute()
    outputs = "".join(str(o) for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", []))
    assert "items, key dim 32" in outputs and "Where was" in outputs
    assert (tmp / "nb.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_inference_export_is_smaller_and_consistent(trained):
    """fp16 without the decoder: loads, matches its fingerprint, and gives latents within fp16 rounding."""
    config, run, tmp = trained
    full = load_model(run)
    fp = export_compressor(full, tmp / "small", include_decoder=False, dtype=torch.float16)
    small = load_model(tmp / "small")
    assert (tmp / "small" / "fingerprint.txt").read_text().strip() == fp
    small_bytes = (tmp / "small" / "weights.safetensors").stat().st_size
    assert small_bytes < (tmp / "export" / "weights.safetensors").stat().st_size / 2
    texts = ["Ann was born in Oslo."]
    with torch.no_grad():
        torch.testing.assert_close(
            small.compressor.encode_evidence(texts), full.compressor.encode_evidence(texts), atol=1e-2, rtol=1e-2
        )


def test_latent_rows_need_a_checkpoint(trained):
    from latentlab.errors import ConfigError

    config, run, tmp = trained
    config.eval.checkpoint = None
    with pytest.raises(ConfigError, match="'eval.checkpoint': the latent methods need a trained compressor"):
        evaluate(config, out_dir=tmp / "no-ckpt", methods=["latent_compact", "no_retrieval"])


def test_demo_trains_and_exports_a_missing_compressor_once(tmp_path):
    from latentlab.demo import ensure_compressor
    from latentlab.memory.checkpoint import WEIGHTS

    config = load_config(TINY_YAML, {**two_step_run(tmp_path), "eval.checkpoint": str(tmp_path / "artifact")})
    target = ensure_compressor(config)
    assert target == tmp_path / "artifact" and (target / WEIGHTS).exists() and (target / "metrics.json").exists()
    runs = list((tmp_path / "runs" / config.name).iterdir())
    stamp = (target / WEIGHTS).stat().st_mtime_ns
    assert ensure_compressor(config) == target  # present now: nothing is trained again
    assert list((tmp_path / "runs" / config.name).iterdir()) == runs and (target / WEIGHTS).stat().st_mtime_ns == stamp
    assert load_model(target).compressor.config.key_dim == 32


def test_demo_makes_a_missing_second_stage_from_its_first(tmp_path):
    """Neither stage shipped: the first is trained and exported, then the projector stage starts from it."""
    from latentlab.demo import ensure_compressor
    from latentlab.memory.checkpoint import WEIGHTS

    base = two_step_run(tmp_path)
    first = load_config(TINY_YAML, {**base, "eval.checkpoint": str(tmp_path / "stage1")})
    second_yaml = REPO / "paper_configs/tiny/latent_memory_text_projector.yaml"
    second = load_config(second_yaml, {**base, "eval.checkpoint": str(tmp_path / "stage2")})
    assert ensure_compressor(second, [first]) == tmp_path / "stage2"
    assert (tmp_path / "stage1" / WEIGHTS).exists() and (tmp_path / "stage2" / WEIGHTS).exists()
    assert second.compressor.init_from == str(tmp_path / "stage1")
    one, two = load_model(tmp_path / "stage1"), load_model(tmp_path / "stage2")
    a, b = one.compressor.trainable_state_dict(), two.compressor.trainable_state_dict()
    shared = [k for k in a if ".decode." not in k]
    assert all(torch.equal(a[k], b[k]) for k in shared if not k.startswith("projector."))
    assert any(not torch.equal(a[k], b[k]) for k in shared if k.startswith("projector."))


def test_evaluation_ignores_the_training_time_validation_limit():
    """data.limit_val shortens validation during a fit; `evaluate` reads the whole split (eval.limit aside)."""
    from latentlab.data.modules import load_qa_split

    config = load_config(TINY_YAML, {"data.synthetic.num_people": 100, "data.limit_val": 3})
    assert len(load_qa_split(config, "val")) == 3
    assert len(load_qa_split(config, "val", training_limits=False)) == 10


def test_second_stage_trains_the_projector_alone_from_an_export(trained):
    """init_from + train_parts: a projector-only stage starts from an inference export, changes nothing else,
    caches the fixed latents, and its checkpoint still holds every learned weight."""
    from latentlab.memory.module import build_task

    _, _, tmp = trained
    overrides = {
        **two_step_run(tmp),
        "compressor.init_from": str(tmp / "export_small"),
        "compressor.train_parts": ["projector"],
        "loss.recon_weight": 0.0,
        "loss.contrast_weight": 0.0,
        "loss.distill_weight": 0.0,
        "loss.answer_weight": 1.0,
        "loss.paraphrase_weight": 1.0,
    }
    source = load_model(tmp / "export")
    export_compressor(source, tmp / "export_small", include_decoder=False)
    config = load_config(TINY_YAML, overrides)
    task = build_task(config)
    module = task.module
    start = {k: v.clone() for k, v in module.compressor.trainable_state_dict().items()}
    exported = source.compressor.trainable_state_dict()
    kept = [k for k in exported if ".decode." not in k]  # the inference export leaves out the decoder
    assert all(torch.equal(start[k], exported[k]) for k in kept)  # init_from loaded the export
    assert module.trainable_names() == {n for n in module.learned_names() if ".projector." in n}

    run = fit(config, run_name="stage2").run_dir
    after = load_model(run)
    end = after.compressor.trainable_state_dict()
    changed = {k for k in start if not torch.equal(start[k], end[k])}
    assert changed and all(k.startswith("projector.") for k in changed), sorted(changed)[:5]
    logged = (run / "logs" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "val/answer" in logged and "val/paraphrase" in logged and "val/recall@1" in logged
    assert not any(name.split("/")[-1] in ("recon", "contrast", "distill") for name in logged)

    # the evidence latents were computed once, without gradients, and match a plain encode
    module.eval()
    batch_texts = ["Ann was born in Oslo.", "Bo works as a pilot."]
    cached = module.latents_of(batch_texts, "compress")
    assert not cached.requires_grad and len(module.frozen_latents) == 2
    with torch.no_grad():
        plain = module.compressor.encode_evidence(batch_texts)
    torch.testing.assert_close(cached, plain)


def test_init_from_errors_name_the_key_and_what_is_missing(trained, tmp_path):
    from latentlab.errors import ConfigError, LatentLabError
    from latentlab.memory.module import build_task

    _, _, tmp = trained
    base = two_step_run(tmp)
    with pytest.raises(ConfigError, match="compressor.init_from.*not found"):
        build_task(load_config(TINY_YAML, {**base, "compressor.init_from": str(tmp_path / "nowhere")}))
    source = load_model(tmp / "export")
    export_compressor(source, tmp_path / "small", include_decoder=False)
    # reconstruction needs the decoder that an inference export leaves out
    with pytest.raises(LatentLabError, match="no decoder"):
        build_task(load_config(TINY_YAML, {**base, "compressor.init_from": str(tmp_path / "small")}))
    with pytest.raises(ConfigError, match=r"compressor.train_parts\[1\].*unknown part 'head'"):
        load_config(TINY_YAML, {**base, "compressor.train_parts": ["projector", "head"]})


def test_more_training_questions_leave_facts_and_held_out_questions_alone():
    two = generate_world(num_people=40, seed=3)
    six = generate_world(num_people=40, seed=3, train_questions_per_person=6)
    assert two.facts == six.facts
    assert len(six.questions["train"]) == 3 * len(two.questions["train"]) == 6 * 32
    for split in ("validation", "test"):
        assert [q.question for q in two.questions[split]] == [q.question for q in six.questions[split]]
    for q in six.questions["train"]:  # every question is still answerable from its supporting facts
        assert set(q.supporting) <= {e.id for e in q.evidence}
        assert any(q.answers[0] in six.facts[s] for s in q.supporting)


READ_LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj", "down_proj"]}


def test_reading_adapter_runs_only_on_latent_prompts(tmp_path):
    """compressor.read_lora: latent prompts go through it, raw-text prompts (teacher, baselines) never do, and a
    fresh adapter leaves the generator exactly as it was."""
    from latentlab.memory.module import LatentMemoryModule
    from latentlab.memory.pipeline import Hit, answer_with_text
    from latentlab.memory.prompting import pack_prompts

    config = load_config(TINY_YAML, {**two_step_run(tmp_path), "compressor.read_lora": READ_LORA})
    module = LatentMemoryModule(config).eval()
    reads = [n for n, _ in module.named_parameters() if ".read." in n]
    assert reads and all("lora_" in n for n in reads)
    question, facts = "Where was Ann born?", ["Ann was born in Oslo.", "Bo is a pilot."]
    reply = [module.reply_tokens("Oslo")]
    with torch.no_grad():
        projected = module.compressor.project(module.compressor.encode_evidence(facts))

        def logits():
            text, _ = module._reply_logits([module.prompts.text(question, facts)], None, reply)
            latent, _ = module._reply_logits([module.prompts.latent(question, 2)], projected, reply)
            packed = pack_prompts(
                [module.prompts.latent(question, 2)],
                module.generator.embed,
                projected,
                reply,
                pad_id=module.generator.pad_id,
                split_prefix=True,
            )
            bare = module.generator.continuation_logits(packed)  # read=False: the bare base
            return text, latent, bare

        text0, latent0, bare0 = logits()
        torch.testing.assert_close(latent0, bare0, atol=0, rtol=0)  # peft starts B at 0: no change yet
        for name, param in module.named_parameters():
            if ".read." in name and "lora_B" in name:
                param.normal_(0, 0.5)
        text1, latent1, bare1 = logits()
    torch.testing.assert_close(text0, text1, atol=0, rtol=0)  # raw text never reads through the adapter
    torch.testing.assert_close(bare0, bare1, atol=0, rtol=0)
    assert not torch.allclose(latent0, latent1)
    # answering: the same split between latent and raw-text prompts
    calls, greedy = [], module.generator.greedy

    def spy(packed, max_new_tokens, read=False):
        calls.append(read)
        return greedy(packed, max_new_tokens, read=read)

    module.generator.greedy = spy
    with torch.no_grad():
        module.model.answer_latents([question], [module.compressor.encode_evidence(facts)])
    answer_with_text(module.model, [question], [[Hit("a", 1.0, None, facts[0])]])
    assert calls == [True, False]


def test_reading_adapter_stage_trains_from_an_export_without_one(trained):
    """init_from an export without a reader + train_parts [projector, read_lora]: only those change; the run's
    export reloads with its reader, and the reader is refused where it is missing at inference."""
    from latentlab.memory.module import build_task

    _, _, tmp = trained
    overrides = {
        **two_step_run(tmp),
        "compressor.init_from": str(tmp / "export"),
        "compressor.read_lora": READ_LORA,
        "compressor.train_parts": ["projector", "read_lora"],
        "loss.recon_weight": 0.0,
        "loss.contrast_weight": 0.0,
        "loss.distill_weight": 0.0,
        "loss.answer_weight": 1.0,
    }
    config = load_config(TINY_YAML, overrides)
    module = build_task(config).module
    start = {k: v.clone() for k, v in module.compressor.trainable_state_dict().items()}
    assert module.trainable_names() == {n for n in module.learned_names() if ".projector." in n or ".read." in n}
    run = fit(config, run_name="reader").run_dir
    after = load_model(run)
    end = after.compressor.trainable_state_dict()
    changed = {k for k in start if not torch.equal(start[k], end[k])}
    assert any(".read." in k for k in changed) and any(k.startswith("projector.") for k in changed)
    assert all(k.startswith("projector.") or ".read." in k for k in changed), sorted(changed)[:5]
    export_compressor(after, tmp / "export_reader", include_decoder=False)
    again = load_model(tmp / "export_reader")
    assert all(torch.equal(again.compressor.trainable_state_dict()[k], end[k]) for k in end if ".decode." not in k)
    # an export without the reader does not stand in for one with it
    from latentlab.errors import LatentLabError
    from latentlab.memory.checkpoint import load_compressor_weights

    with pytest.raises(LatentLabError, match="missing .*read"):
        load_compressor_weights(again, tmp / "export")


def test_reading_adapter_needs_the_generator_to_share_the_base(tmp_path):
    from latentlab.errors import ConfigError
    from latentlab.memory.module import LatentMemoryModule

    other = {"tiny": {"layers": 2, "hidden": 32, "heads": 4}}
    config = load_config(
        TINY_YAML, {**two_step_run(tmp_path), "compressor.read_lora": READ_LORA, "generator.backbone.model": other}
    )
    with pytest.raises(ConfigError, match="compressor.read_lora"):
        LatentMemoryModule(config)


def test_demo_stages_chain_each_from_the_last():
    """Each demo stage starts from the compressor the stage before ships (what ensure_compressor relies on)."""
    from latentlab.demo import STAGES

    configs = [load_config(REPO / stage) for stage in STAGES]
    assert configs[0].compressor.init_from is None
    for before, after in zip(configs, configs[1:]):
        assert after.compressor.init_from == before.eval.checkpoint, after.source_file
    assert len({c.eval.checkpoint for c in configs}) == len(configs)


def test_reader_oracle_scores_every_input_and_names_a_bad_config(tmp_path, capsys, monkeypatch):
    """experiments/reader_oracle.py on a tiny generator: one row per input, a table naming its command."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("experiments_reader_oracle", REPO / "experiments/reader_oracle.py")
    script = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = script
    spec.loader.exec_module(script)
    overrides = {**two_step_run(tmp_path), "eval.limit": 3}
    answered = []  # what the generator answered under each input, in row order
    original = script._answers
    monkeypatch.setattr(script, "_answers", lambda *args: answered.append(original(*args)) or answered[-1])
    rows = script.reader_oracle(str(TINY_YAML), tmp_path / "out", "the command", overrides)
    assert [r["input"] for r in rows][:3] == ["no context", "gold answer as text", "supporting facts as text"]
    assert len(rows) == len(answered) == 7 and all(r["questions"] == 3 for r in rows)
    config = load_config(TINY_YAML, overrides)
    gold = [e.answers for e in load_qa_split(config, config.eval.split, training_limits=False)[:3]]
    for row, predictions in zip(rows, answered):  # each row scores its own answers against the gold answers
        assert len(predictions) == 3, row["input"]
        f1 = sum(token_f1(p, g) for p, g in zip(predictions, gold)) / 3
        em = sum(exact_match(p, g) for p, g in zip(predictions, gold)) / 3
        assert row["f1"] == pytest.approx(f1, abs=1e-6, rel=0) and row["exact_match"] == pytest.approx(em, abs=1e-6)
    table = (tmp_path / "out" / "latent_memory_text_tiny_reader_oracle.md").read_text()
    assert "Produced by: `the command`" in table and "slot = mean of answer tokens (compact)" in table
    assert script.main([str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err


def test_answer_token_probe_scores_latents_and_the_word_control_on_answer_bearing_sentences(trained, capsys):
    """experiments/probe_answer_tokens.py on the tiny export: both feature sets, answer and sentence recall, and the
    answer span located by character offsets inside its supporting sentence."""
    import importlib.util
    import sys

    from latentlab.data.modules import corpus_of
    from latentlab.data.schema import write_jsonl

    config, _, tmp = trained
    spec = importlib.util.spec_from_file_location(
        "experiments_probe_tokens", REPO / "experiments/probe_answer_tokens.py"
    )
    script = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = script
    spec.loader.exec_module(script)
    examples = load_qa_split(config, "test", training_limits=False)
    rows = script.answer_rows(examples)
    assert rows and all(answer.lower() in text.lower() for text, answer in rows)
    tokenizer = load_model(tmp / "export").compressor.tokenizer
    text, answer = rows[0]
    ids, inside = script.span_tokens(tokenizer, text, answer, 64)
    assert inside and set(inside) <= set(ids)
    assert answer.lower() in tokenizer.decode(inside).lower()
    corpus = tmp / "unlabelled.jsonl"
    write_jsonl(corpus, corpus_of(config, examples)[:40])
    overrides = two_step_run(tmp)
    results = script.probe_answer_tokens(
        str(TINY_YAML), str(tmp / "export"), str(corpus), 30, 5, tmp / "probe", "the command", overrides
    )
    assert [r["features"].split(" ")[0] for r in results] == ["latent", "mean"]
    for row in results:
        assert row["train_sentences"] == 30 and row["test_sentences"] >= 1
        assert 0.0 <= row["answer_tokens_recall@5"] <= 1.0 and 0.0 <= row["sentence_tokens_recall@5"] <= 1.0
    table = (tmp / "probe" / "latent_memory_text_tiny_answer_tokens.md").read_text()
    assert "Produced by: `the command`" in table
    assert (
        script.main([str(TINY_YAML), "--unlabelled", str(tmp / "missing.jsonl"), "--checkpoint", str(tmp / "export")])
        == 2
    )
    assert "missing.jsonl" in capsys.readouterr().err


def test_init_fresh_decoder_keeps_the_stage_before_but_its_decoder(trained):
    """compressor.init_fresh_decoder: everything but the reconstruction adapter comes from init_from; the decoder
    starts as a new run's (so a shipped, decoder-less export can be reconstructed from again)."""
    from latentlab.errors import ConfigError, LatentLabError
    from latentlab.memory.module import build_task

    config, _, tmp = trained
    export_compressor(load_model(tmp / "export"), tmp / "export_no_decoder", include_decoder=False)
    stored = load_model(tmp / "export").compressor.trainable_state_dict()
    base = {**two_step_run(tmp), "compressor.init_from": str(tmp / "export_no_decoder")}
    with pytest.raises(LatentLabError, match="decoder"):
        build_task(load_config(TINY_YAML, base))  # reconstructs, but the export has no decoder
    fresh = build_task(load_config(TINY_YAML, {**base, "compressor.init_fresh_decoder": True})).module
    new = build_task(load_config(TINY_YAML, two_step_run(tmp))).module  # what a new run starts from
    state, start = fresh.compressor.trainable_state_dict(), new.compressor.trainable_state_dict()
    decoder = [k for k in state if ".decode." in k]
    assert decoder and all(torch.equal(state[k], start[k]) for k in decoder)
    assert not all(torch.equal(state[k], stored[k]) for k in decoder)  # the export's trained decoder is not it
    for k in state:
        if ".decode." not in k:
            torch.testing.assert_close(state[k], stored[k].to(state[k].dtype), msg=k)
    # the full export's decoder is not loaded either
    full = build_task(
        load_config(
            TINY_YAML, {**base, "compressor.init_from": str(tmp / "export"), "compressor.init_fresh_decoder": True}
        )
    ).module
    assert all(torch.equal(full.compressor.trainable_state_dict()[k], start[k]) for k in decoder)
    with pytest.raises(ConfigError, match="init_fresh_decoder"):
        load_config(TINY_YAML, {**two_step_run(tmp), "compressor.init_fresh_decoder": True})
    with pytest.raises(ConfigError, match="init_fresh_decoder"):
        load_config(TINY_YAML, {**base, "compressor.init_fresh_decoder": True, "loss.recon_weight": 0.0})
