"""`task: latent_cot` end to end on tiny models: configs, fit of every method, curriculum stages, evaluation, errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from latentlab.configs import load_config, merge_pairs, parse_pairs
from latentlab.errors import ConfigError, DataError
from latentlab.eval.metrics import answers_match
from latentlab.optim import VAL_STREAM, derive_seed
from latentlab.reasoning.data import CoTDataModule, latent_step_texts, load_cot_split
from latentlab.reasoning.evaluate import explain, load_run, step_token_accuracy
from latentlab.reasoning.module import extract_answer, tokens_before_answer
from latentlab.reasoning.thoughts import next_token
from latentlab.training import fit
from tests.conftest import REPO

TINY_COT = REPO / "paper_configs/tiny/coconut_arithmetic_cot.yaml"
REASONING_YAMLS = sorted(
    p for p in (REPO / "paper_configs/reasoning").glob("*.yaml") if not p.name.endswith("_benchmarks.yaml")
)
TINY_TWINS = {
    "coconut_arithmetic_no_cot.yaml": "coconut_gsm8k_aug_gpt2_no_cot.yaml",
    "coconut_arithmetic_cot.yaml": "coconut_gsm8k_aug_gpt2_cot.yaml",
    "coconut_arithmetic.yaml": "coconut_gsm8k_aug_gpt2.yaml",
    "atp_latent_arithmetic.yaml": "atp_latent_gsm8k_aug_llama1b.yaml",
    "latent_sft_arithmetic.yaml": "latent_sft_gsm8k_aug_llama1b.yaml",
}
TINY_REASONER = {"tiny": {"arch": "gpt2", "layers": 2, "hidden": 32, "heads": 2}}
TINY_CVAE = {
    "thoughts_per_step": 1,
    "latent_dim": 8,
    "mlp_dim": 16,
    "text_embed_dim": 8,
    "text_dim": 8,
    "decoder_embed_dim": 8,
    "decoder_hidden_dim": 16,
}


def tiny(tmp_path: Path, method: str, **extra) -> dict:
    """Overrides that turn the tiny CoT config into a seconds-long run of ``method`` on a 2-layer GPT-2."""
    return {
        "name": f"t_{method}",
        "reasoning.method": method,
        "reasoning.reasoner": TINY_REASONER,
        "reasoning.curriculum": {"thoughts_per_step": 1, "max_latent_stage": 2, "epochs_per_stage": 1},
        "reasoning.cvae": TINY_CVAE,
        "reasoning.data.num_train": 8,
        "reasoning.data.num_val": 4,
        "reasoning.data.num_test": 4,
        "reasoning.data.batch_size": 4,
        "sampling.max_new_tokens": 8,
        "reasoning.val_generate_batches": 1,
        "trainer.max_steps": 2,
        "trainer.progress_bar": False,
        "trainer.num_threads": 1,
        "trainer.checkpoint_every_n_steps": 2,
        "eval.batch_size": 2,
        "output_dir": str(tmp_path / "runs"),
        **extra,
    }


def validation_of_checkpoint(run_dir: Path, stage: int) -> dict[str, float]:
    """The validation metrics of a run's saved weights, recomputed outside the Trainer: its losses on the one
    validation batch (num_val == batch_size) with the validation step's seed, and the accuracy and token counts of
    its greedy answers to those questions."""
    module = load_run(run_dir)
    data = CoTDataModule(module.config, module.vocab, module.pad_id)
    data.setup("fit")
    data.stage_override = stage
    (batch,) = list(data.val_dataloader())
    generator = torch.Generator().manual_seed(derive_seed(module.config.seed, VAL_STREAM, 0))
    with torch.no_grad():
        metrics = {f"val/{k}": float(v) for k, v in module.compute_losses(batch, generator).items()}
    answers = module.generate_answers(batch.questions, stage)
    n = len(batch.questions)
    metrics["val/accuracy"] = sum(answers_match(p, g) for p, g in zip(answers.predictions, batch.answers)) / n
    metrics["val/latent_tokens"] = sum(answers.n_latent) / n
    metrics["val/language_tokens"] = sum(answers.n_language) / n
    metrics["val/stage"] = float(stage)
    return metrics


def fit_step_decoder(module, z: torch.Tensor, texts: list[str], steps: int = 300) -> None:
    """Train the CVAE's step decoder alone (Adam, in place) to rebuild ``texts`` from the thought latents z [N, c, Z]."""
    eos = module.vocab.eos_id
    ids = [module.vocab.encode(text) for text in texts]
    width = max(len(row) for row in ids)
    step_ids = torch.tensor([row + [eos] * (width - len(row)) for row in ids])
    lengths = torch.tensor([len(row) for row in ids])
    decoder = module.cvae.decoder
    optimizer = torch.optim.Adam(decoder.parameters(), lr=3e-2)
    with torch.enable_grad():
        for _ in range(steps):
            optimizer.zero_grad()
            decoder.nll(z.detach(), step_ids, lengths, eos).sum().backward()
            optimizer.step()


class ScriptedStop(torch.nn.Module):
    """Stands in for the stop head: row b says "stop" from its ``stops[b]``-th step start on (a new instance for each
    generation: it counts its calls), so the thoughts each question must use are known."""

    def __init__(self, stops: list[int]):
        super().__init__()
        self.stops, self.calls = torch.tensor(stops), 0

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(z.shape[0], 2)
        logits[:, 1] = (self.calls >= self.stops).float()  # argmax 1 = stop; a tie (0, 0) continues
        self.calls += 1
        return logits


# ---------------------------------------------------------------------------------------------------------------------
# Configs


@pytest.mark.parametrize("name", sorted(TINY_TWINS))
def test_tiny_twins_load_and_base_their_paper_config(name):
    path = REPO / "paper_configs/tiny" / name
    assert yaml.safe_load(path.read_text())["base"] == f"../reasoning/{TINY_TWINS[name]}"
    tiny_config = load_config(path)
    paper = load_config(REPO / "paper_configs/reasoning" / TINY_TWINS[name])
    assert tiny_config.task == paper.task == "latent_cot"
    assert tiny_config.reasoning.method == paper.reasoning.method
    assert tiny_config.reasoning.data.source == "arithmetic" and tiny_config.trainer.accelerator == "cpu"


def test_paper_configs_follow_the_references():
    configs = {p.stem: load_config(p) for p in REASONING_YAMLS}
    coconut = configs["coconut_gsm8k_aug_gpt2"]
    assert coconut.reasoning.reasoner == "openai-community/gpt2"
    assert (coconut.reasoning.curriculum.thoughts_per_step, coconut.reasoning.curriculum.max_latent_stage) == (2, 3)
    assert coconut.optim.lr == 1e-4 and coconut.optim.weight_decay == 0.01
    assert coconut.reasoning.data.batch_size * coconut.trainer.accumulate_grad_batches == 128
    resumed_epochs = coconut.reasoning.start_stage * coconut.reasoning.curriculum.epochs_per_stage
    assert resumed_epochs + coconut.trainer.max_epochs == 25  # Coconut's run resumes its CoT run at epoch 3 of 25
    assert {c.reasoning.method for c in configs.values()} == {"no_cot", "cot", "coconut", "atp_latent", "latent_sft"}
    latent_sft = configs["latent_sft_gsm8k_aug_llama1b"]  # Latent-GRPO's start: top-10 superpositions until <eot>
    assert latent_sft.reasoning.reasoner == "meta-llama/Llama-3.2-1B-Instruct"
    assert latent_sft.reasoning.latent_sft.topk == 10 and latent_sft.reasoning.curriculum.supervise_eot
    atp = configs["atp_latent_gsm8k_aug_llama1b"]
    assert atp.reasoning.reasoner == "meta-llama/Llama-3.2-1B-Instruct" and atp.reasoning.cvae.thoughts_per_step == 2
    gsm8k = configs.pop("cot_gsm8k_qwen1.5b")  # the SFT start of the GSM8K GRPO config: GSM8K's own solutions
    assert gsm8k.reasoning.data.source == "gsm8k" and gsm8k.reasoning.reasoner == "Qwen/Qwen2.5-1.5B-Instruct"
    assert all("../shared/data/gsm8k_aug/" in c.reasoning.data.test for c in configs.values())


def test_rl_paper_configs_follow_the_references():
    """GSM8K GRPO with a 1.5B instruct model (Latent-GRPO's batch and loss), DPPO as in the verl example, and the FP16
    paper's sanity test; each header names its command and GPU."""
    rl = {p.stem: load_config(p) for p in sorted((REPO / "paper_configs/rl").glob("*.yaml"))}
    grpo, dppo, fp16 = rl["grpo_gsm8k_qwen1.5b"], rl["dppo_gsm8k_qwen1.5b"], rl["fp16_sanity_r1d1.5b"]
    assert grpo.reasoning.reasoner == "Qwen/Qwen2.5-1.5B-Instruct" and grpo.reasoning.data.source == "gsm8k"
    assert (grpo.rl.prompts_per_step, grpo.advantage.group_size, grpo.rl.minibatch_size) == (64, 8, 128)
    assert grpo.optim.lr == 1e-6 and grpo.policy_loss.dual_clip == 3.0 and grpo.policy_loss.kl_beta == 0
    assert dppo.policy_loss.name == "dppo" and dppo.policy_loss.divergence == "binary_tv"
    assert (dppo.policy_loss.delta_low, dppo.policy_loss.ratio_cap) == (0.15, 10000.0)
    assert (fp16.rl.rollout_precision, fp16.rl.train_precision, fp16.rl.loss_scale_growth_interval) == (
        "fp16",
        "fp16",
        400,
    )
    for name, config in rl.items():
        header = (REPO / "paper_configs/rl" / f"{name}.yaml").read_text().split("\nname:")[0]
        assert "latentlab fit paper_configs/rl/" in header and "GPU" in header, name
        assert config.task == "latent_rl" and config.trainer.accelerator == "gpu", name


def test_method_sets_the_curriculum_mode_and_contradictions_name_the_key(tmp_path):
    config = load_config(TINY_COT, {"reasoning.method": "no_cot"})
    assert config.reasoning.curriculum.mode == "no_cot"
    with pytest.raises(ConfigError, match="curriculum.mode.*contradicts method 'cot'"):
        load_config(TINY_COT, {"reasoning.curriculum.mode": "no_cot"})
    with pytest.raises(ConfigError, match="cvae.thoughts_per_step"):
        load_config(TINY_COT, {"reasoning.method": "atp_latent", "reasoning.cvae.thoughts_per_step": 3})
    with pytest.raises(ConfigError, match="num_samples"):
        load_config(TINY_COT, {"eval.pass_k": [1, 4]})


# ---------------------------------------------------------------------------------------------------------------------
# Pure helpers


def test_latent_step_texts_follow_the_group_rule():
    steps = ["s1", "s2", "s3", "s4"]
    assert latent_step_texts(steps, 2, 3) == ["s1", "s2", ""]  # a group past the latent steps rebuilds EOS only
    assert latent_step_texts(steps, 4, 3) == ["s1", "s2", "s3 s4"]  # the last group takes the remaining steps
    assert latent_step_texts(steps, 0, 0) == []


def test_answer_extraction_and_reasoning_token_count():
    from latentlab.backbones import byte_tokenizer

    assert extract_answer("<<3*4=12>>\n### 12") == "12"
    assert extract_answer("  7 ") == "7"
    tokenizer = byte_tokenizer()
    ids = tokenizer("<<1+2=3>>\n### 3", add_special_tokens=False)["input_ids"]
    assert tokens_before_answer(ids, tokenizer) == len("<<1+2=3>>\n")  # byte-level: one token a character
    assert tokens_before_answer(tokenizer("### 3", add_special_tokens=False)["input_ids"], tokenizer) == 0


def test_next_token_samples_softmax_and_is_argmax_at_zero_temperature():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]])).expand(20000, 3)
    greedy = next_token(logits, 0.0)
    assert (greedy == 0).all()
    sampled = next_token(logits, 1.0, torch.Generator().manual_seed(0))
    freq = torch.bincount(sampled, minlength=3).float() / len(sampled)
    torch.testing.assert_close(freq, torch.tensor([0.7, 0.2, 0.1]), atol=0.015, rtol=0)


# ---------------------------------------------------------------------------------------------------------------------
# Fit, stages, optimizer resets, resume


@pytest.mark.parametrize("method", ["no_cot", "cot", "coconut", "atp_latent"])
def test_two_step_fit_of_every_method(tmp_path, method):
    config = load_config(TINY_COT, tiny(tmp_path, method))
    result = fit(config, run_name="r")
    assert result.metrics["global_step"] == 2
    assert (result.run_dir / "last.ckpt").exists() and (result.run_dir / "metrics.json").exists()
    after = result.metrics["val_after"]
    # 8 questions at batch 4: the 2 steps are epoch 0, so the last validation runs at epoch 1: stage 1 (c = 1 thought
    # a latent step) for the latent methods, stage 0 for cot / no_cot.
    latent = method in ("coconut", "atp_latent")
    assert after["val/stage"] == (1.0 if latent else 0.0) and after["val/latent_tokens"] == after["val/stage"]
    losses = {"val/answer_ce", "val/loss"} | (
        {"val/recon", "val/kl", "val/beta", "val/elbo"} if method == "atp_latent" else set()
    )
    generated = {"val/accuracy", "val/latent_tokens", "val/language_tokens", "val/stage"}
    assert set(after) == losses | generated
    # What fit logged is what the saved weights give on the validation batch.
    recomputed = validation_of_checkpoint(result.run_dir, int(after["val/stage"]))
    assert set(recomputed) == set(after)
    for name, value in recomputed.items():
        assert after[name] == pytest.approx(value, abs=1e-5, rel=0), name
    if method == "atp_latent":  # the ELBO of the step sums, and the loss: answer CE + elbo_weight (1) x ELBO
        assert after["val/beta"] == 1.0  # cvae.beta 1, no warm-up
        assert after["val/elbo"] == pytest.approx(after["val/recon"] + after["val/kl"], abs=1e-4, rel=0)
        assert after["val/loss"] == pytest.approx(after["val/answer_ce"] + after["val/elbo"], abs=1e-4, rel=0)
    else:
        assert after["val/loss"] == after["val/answer_ce"]


def test_atp_stop_head_trains_and_ends_thoughts_per_question(tmp_path):
    """With pad_latent_to_max off, rows of 1-4 steps have their own thought counts: the stop head learns from them,
    and generation reports the thoughts each question actually used."""
    stop = {"reasoning.cvae": {**TINY_CVAE, "stop_head": True}}
    with pytest.raises(ConfigError, match="cvae.stop_head.*pad_latent_to_max: false"):
        load_config(TINY_COT, tiny(tmp_path, "atp_latent", **stop))
    overrides = tiny(
        tmp_path,
        "atp_latent",
        **stop,
        **{
            "reasoning.curriculum": {"thoughts_per_step": 1, "max_latent_stage": 4, "pad_latent_to_max": False},
            "reasoning.start_stage": 5,
            "reasoning.data.min_steps": 1,
            "reasoning.data.max_steps": 4,
        },
    )
    config = load_config(TINY_COT, overrides)
    L.seed_everything(config.seed, verbose=False)
    from latentlab.reasoning.task import build_task

    initial = {k: v.clone() for k, v in build_task(config).module.cvae.stop.state_dict().items()}
    result = fit(config, run_name="r")
    after = result.metrics["val_after"]
    recomputed = validation_of_checkpoint(result.run_dir, 5)
    for name in ("val/stop", "val/stop_accuracy", "val/loss"):
        assert after[name] == pytest.approx(recomputed[name], abs=1e-5, rel=0), name
    module = load_run(result.run_dir)
    for key, value in module.cvae.stop.state_dict().items():
        assert not torch.equal(value, initial[key]), f"stop head weight {key} got no update"
    questions = ["a=1, b=2. Compute a+b.", "a=3, b=1, c=2. Compute (a-b)+c."]
    answers = module.generate_answers(questions, stage=5)
    # The trained head: each row's thoughts end at the first step start (c = 1: every slot) where the head, on the
    # z chosen there, says stop; 4 (= M * c) if it never does.
    says_stop = (module.cvae.stop(answers.latents[:, :, 0]).argmax(dim=-1) == 1).tolist()
    assert answers.n_latent == [row.index(True) if True in row else 4 for row in says_stop]
    # A scripted head: rows that stop at step start 1 and 3 use 1 and 3 of the 4 thoughts; explain decodes as many
    # groups as the question used (c = 1: one per thought): none, 2, or all 4 when the stop (9) never comes.
    module.cvae.stop = ScriptedStop([1, 3])
    assert module.generate_answers(questions, stage=5).n_latent == [1, 3]
    for stops, question in ((0, questions[0]), (2, questions[1]), (9, questions[1])):
        module.cvae.stop = ScriptedStop([stops])
        explanation = explain(module, question)
        assert explanation.n_thoughts == len(explanation.decoded_steps) == min(stops, 4), stops


class StageProbe(L.Callback):
    """Records each epoch's thought count and whether the optimizer state was empty at its first batch."""

    def __init__(self):
        self.thoughts: dict[int, int] = {}
        self.fresh_optimizer: dict[int, bool] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            self.thoughts[trainer.current_epoch] = batch.thoughts.n_thoughts
            self.fresh_optimizer[trainer.current_epoch] = len(trainer.optimizers[0].state) == 0


@pytest.mark.parametrize("method", ["coconut", "cot"])
def test_stage_changes_at_epoch_boundaries_reset_the_optimizer(tmp_path, method):
    probe = StageProbe()
    overrides = tiny(tmp_path, method, **{"trainer.max_steps": -1, "trainer.max_epochs": 4})
    fit(load_config(TINY_COT, overrides), run_name="r", callbacks=[probe])
    if method == "coconut":  # c = 1, M = 2: stages 0, 1, 2, then all latent with M*c thoughts
        assert probe.thoughts == {0: 0, 1: 1, 2: 2, 3: 2}
        assert probe.fresh_optimizer == {0: True, 1: True, 2: True, 3: True}
    else:
        assert probe.thoughts == {0: 0, 1: 0, 2: 0, 3: 0}
        assert probe.fresh_optimizer == {0: True, 1: False, 2: False, 3: False}


def test_start_stage_and_init_from_continue_a_cot_run(tmp_path):
    cot = fit(load_config(TINY_COT, tiny(tmp_path, "cot")), run_name="cot")
    probe = StageProbe()
    overrides = tiny(
        tmp_path,
        "coconut",
        **{
            "reasoning.init_from": str(cot.run_dir),
            "reasoning.start_stage": 1,
            "trainer.max_steps": -1,
            "trainer.max_epochs": 2,
        },
    )
    from latentlab.reasoning.task import build_task

    module = build_task(load_config(TINY_COT, overrides)).module
    saved = torch.load(cot.run_dir / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    for key, value in module.reasoner.state_dict().items():
        torch.testing.assert_close(value, saved[f"reasoner.{key}"], atol=0, rtol=0)
    fit(load_config(TINY_COT, overrides), run_name="co", callbacks=[probe])
    assert probe.thoughts == {0: 1, 1: 2}


def test_resume_continues_the_step_count(tmp_path):
    overrides = tiny(tmp_path, "coconut")
    first = fit(load_config(TINY_COT, overrides), run_name="r")
    resumed = fit(load_config(TINY_COT, {**overrides, "trainer.max_steps": 4}), resume=first.run_dir)
    assert resumed.metrics["global_step"] == 4


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation and explanations


@pytest.fixture(scope="module")
def atp_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("atp")
    config = load_config(TINY_COT, tiny(tmp_path, "atp_latent", **{"reasoning.start_stage": 3}))
    return config, fit(config, run_name="r").run_dir


def test_evaluate_cot_writes_predictions_summary_and_table(atp_run, tmp_path):
    from latentlab.reasoning.evaluate import evaluate_cot

    config, run_dir = atp_run
    config = load_config(TINY_COT, {**tiny(tmp_path, "atp_latent"), "sampling.num_samples": 3, "eval.pass_k": [1, 2]})
    result = evaluate_cot(config, run_dir, out_dir=tmp_path / "eval", command="test")
    for name in ("predictions.jsonl", "summary.json", "table.md", "table.csv", "table.png"):
        assert (tmp_path / "eval" / name).exists(), name
    records = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all(r["samples"] == 3 and 0 <= r["samples_correct"] <= 3 for r in records)
    assert all(r["latent_tokens"] == 2 for r in records)  # final stage: M * c = 2 thoughts
    row = result.rows[0]
    assert row["method"] == "ATP-Latent"
    # pass@k of 3 samples with c correct (unbiased estimator): pass@1 = c / 3, pass@2 = 1 - C(3 - c, 2) / C(3, 2)
    correct = [r["samples_correct"] for r in records]
    assert row["pass@1"] == pytest.approx(sum(c / 3 for c in correct) / 4, abs=1e-6, rel=0)
    assert row["pass@2"] == pytest.approx(sum(1 - math.comb(3 - c, 2) / 3 for c in correct) / 4, abs=1e-6, rel=0)
    # the 3 samples of a question are rows q * 3 + s of one batched generation; pass@1 is their mean accuracy
    assert all(len(r["sample_predictions"]) == len(r["sample_reasoning_tokens"]) == 3 for r in records)
    assert all(
        r["samples_correct"] == sum(answers_match(p, r["gold"]) for p in r["sample_predictions"]) for r in records
    )
    assert row["sample_accuracy"] == pytest.approx(row["pass@1"], abs=1e-12, rel=0)
    assert row["accuracy"] == pytest.approx(sum(r["correct"] for r in records) / 4, abs=1e-6, rel=0)
    assert row["reasoning_tokens_mean"] >= row["latent_tokens_mean"] == 2.0
    examples = load_cot_split(config, "test")
    expected = step_token_accuracy(run_dir, examples, config.eval.batch_size).token_accuracy
    assert row["step_token_accuracy"] == pytest.approx(expected, abs=1e-6, rel=0)
    assert all(isinstance(r["correct_with_shuffled_thoughts"], bool) for r in records)
    shuffled = sum(r["correct_with_shuffled_thoughts"] for r in records) / len(records)
    assert row["shuffled_thought_accuracy"] == pytest.approx(shuffled)
    assert "ATP-Latent" in result.table() and "Produced by: `test`" in (tmp_path / "eval" / "table.md").read_text()
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["method"] == "atp_latent" and summary["questions"] == 4


def test_explain_decodes_every_thought_group(atp_run):
    """explain decodes each thought group of the question with the CVAE's decoder: once the decoder is fitted to
    rebuild two known steps from this question's own thoughts, explain gives back exactly those steps."""
    _, run_dir = atp_run
    module = load_run(run_dir)
    curriculum = module.config.reasoning.curriculum
    question = "a=3, b=4, c=2. Compute (a+b)-c."
    # The final stage feeds M groups of c thoughts: M = 2, c = 1.
    groups, n_thoughts = curriculum.max_latent_stage, curriculum.max_latent_stage * curriculum.thoughts_per_step
    assert (groups, n_thoughts) == (2, 2)
    untrained = explain(module, question)
    assert untrained.n_thoughts == n_thoughts and len(untrained.decoded_steps) == groups
    answers = module.generate_answers([question], module.config.reasoning.final_stage)
    assert answers.latents.shape[:3] == (1, groups, curriculum.thoughts_per_step)
    steps = ["<<3+4=7>>", "<<7-2=5>>"]
    fit_step_decoder(module, answers.latents[0], steps)
    explanation = explain(module, question)
    assert explanation.decoded_steps == steps and explanation.n_thoughts == n_thoughts
    # The decoder is not part of answering: the answer and its text are the ones generated before the fit.
    assert (explanation.text, explanation.answer) == (answers.texts[0], answers.predictions[0])
    assert explanation.answer == extract_answer(explanation.text)


def test_step_token_accuracy_counts_only_real_steps(atp_run):
    config, run_dir = atp_run
    examples = load_cot_split(config, "test")
    # Final stage: M = 2 groups (c = 1). Every test example has >= 3 steps, so group 1 rebuilds step 1 and group 2
    # the remaining steps joined by spaces; each gold is its byte-level tokens (one a character) and an EOS.
    golds = [text for ex in examples for text in (ex.steps[0], " ".join(ex.steps[1:]))]
    assert all(len(ex.steps) >= 3 for ex in examples)
    module = load_run(run_dir)
    assert all(len(module.vocab.encode(text)) == len(text) for text in golds)
    # A decoder whose logits ignore its input, highest on "<": every group decodes to 48 (max_step_tokens) "<", so
    # the gold tokens matched are its "<" characters, and no step is exact.
    with torch.no_grad():
        module.cvae.decoder.out.weight.zero_()
        module.cvae.decoder.out.bias.zero_()
        module.cvae.decoder.out.bias[module.vocab.encode("<")[0]] = 1.0
    score = step_token_accuracy(module, examples, batch_size=2)
    assert score.n_steps == len(golds) == 2 * len(examples)
    assert score.n_tokens == sum(len(text) + 1 for text in golds)
    assert score.token_accuracy == pytest.approx(sum(t.count("<") for t in golds) / score.n_tokens, abs=1e-12)
    assert score.step_exact_match == 0.0
    # A decoder fitted to rebuild a question's two gold groups from its own two thoughts matches every token and
    # step. (One question: after 2 training steps, different questions' thoughts are still nearly the same vectors.)
    module = load_run(run_dir)
    latents = module.generate_answers([examples[0].question], module.config.reasoning.final_stage).latents
    fit_step_decoder(module, latents[0], golds[:2])
    score = step_token_accuracy(module, examples[:1], batch_size=1)
    assert (score.token_accuracy, score.step_exact_match, score.n_steps) == (1.0, 1.0, 2)
    assert score.n_tokens == len(golds[0]) + len(golds[1]) + 2


def test_explain_refuses_a_run_without_a_cvae(tmp_path):
    run_dir = fit(load_config(TINY_COT, tiny(tmp_path, "coconut")), run_name="r").run_dir
    with pytest.raises(ConfigError, match="needs an atp_latent run"):
        explain(run_dir, "a=1, b=2. Compute a+b.")


# ---------------------------------------------------------------------------------------------------------------------
# Data errors


def test_malformed_data_line_names_file_and_line(tmp_path):
    good = {"id": "x1", "question": "a=1, b=2. Compute a+b.", "steps": ["<<1+2=3>>"], "answer": "3"}
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(good) + "\n" + '{"id": "x2", "question": "q", "steps": "not a list", "answer": "1"}\n')
    overrides = {"reasoning.data.source": "jsonl", "reasoning.data.train": str(path), "reasoning.data.val": None}
    config = load_config(TINY_COT, {**tiny(tmp_path, "cot"), **overrides})
    from latentlab.reasoning.task import build_task

    datamodule = build_task(config).datamodule
    with pytest.raises(DataError, match=r"bad\.jsonl:2: field 'steps' must be a list"):
        datamodule.setup("fit")


def test_missing_training_file_names_the_key(tmp_path):
    overrides = {"reasoning.data.source": "gsm8k_aug", "reasoning.data.train": "no/such/train.txt"}
    config = load_config(TINY_COT, {**tiny(tmp_path, "cot"), **overrides})
    datamodule = CoTDataModule(config, vocab=None, pad_id=0)
    with pytest.raises(ConfigError, match=r"'reasoning.data.train': file not found"):
        datamodule.setup("fit")


def _experiment_script(name: str):
    """experiments/NAME.py as a module (the scripts are not a package; dataclasses need it in sys.modules)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(f"experiments_{name}", REPO / f"experiments/{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_sweep_fits_and_scores_each_variant(tmp_path):
    """experiments/sweep.py: one row per variant (common --set below it), scored by evaluate_cot, written as a
    table; a pair without '=' is refused before anything is trained."""
    sweep_mod = _experiment_script("sweep")
    assert parse_pairs("a.b=1 c='x y' d=[1,2]", "t") == {"a.b": 1, "c": "x y", "d": [1, 2]}
    with pytest.raises(ConfigError, match="--variant #2: expected KEY=VALUE"):
        parse_pairs("epochs_per_stage", "--variant #2")
    with pytest.raises(ConfigError, match="--set #1: value of 'd' is not valid YAML"):
        parse_pairs("d=[1,", "--set #1")
    assert merge_pairs(["a=1 b=2", "b=3"], "--set") == {"a": 1, "b": 3}
    with pytest.raises(ConfigError, match="--set #2: expected KEY=VALUE"):
        merge_pairs(["a=1", "b"], "--set")
    common = tiny(tmp_path, "cot")
    variants = [{"optim.lr": 1e-3}, {"optim.lr": 1e-2, "trainer.max_steps": 1}]
    rows = sweep_mod.sweep(TINY_COT, "lr", variants, common, tmp_path / "sweeps")
    assert [r["variant"] for r in rows] == ["lr=0.001", "lr=0.01 max_steps=1"]
    for i, row in enumerate(rows, 1):  # each row scores its own run: evaluate_cot's predictions in run_dir/eval
        assert row["run_dir"].endswith(f"lr-{i}") and row["questions"] == 4
        records = [
            json.loads(line) for line in (Path(row["run_dir"]) / "eval/predictions.jsonl").read_text().splitlines()
        ]
        assert row["accuracy"] == pytest.approx(sum(r["correct"] for r in records) / len(records), abs=1e-6, rel=0)
    table = (tmp_path / "sweeps" / "lr.md").read_text()
    assert "lr=0.01 max_steps=1" in table and (tmp_path / "sweeps" / "lr.csv").exists()
    with pytest.raises(ConfigError, match="trainer.max_stepz|max_stepz"):
        sweep_mod.sweep(TINY_COT, "bad", [{"trainer.max_stepz": 1}], common, tmp_path / "sweeps")


def test_reproduce_reuses_a_finished_row_instead_of_training_it(tmp_path):
    """experiments/reproduce.py --reuse: the reused row is evaluated from its run (fit time from its metrics), the
    rows after it start from it, and nothing new is trained for it; a run without last.ckpt is refused."""
    reproduce_mod = _experiment_script("reproduce")
    common = {k: v for k, v in tiny(tmp_path, "cot").items() if k not in ("name", "reasoning.method")}
    common["reasoning.init_from"] = None
    first = reproduce_mod.reproduce("coconut_arithmetic", "tiny", ["cot", "coconut"], common, "a", tmp_path / "res")
    cot_run = Path(first[0]["run_dir"])
    cot_run = cot_run if cot_run.is_absolute() else REPO / cot_run
    again = reproduce_mod.reproduce(
        "coconut_arithmetic", "tiny", ["cot", "coconut"], common, "b", tmp_path / "res", reuse={"cot": cot_run}
    )
    assert again[0]["accuracy"] == first[0]["accuracy"]
    assert again[0]["fit_s"] == json.loads((cot_run / "metrics.json").read_text())["wall_time_s"]
    assert not (cot_run.parent / "b").exists() and Path(again[1]["run_dir"]).name == "b"
    assert "--run b --reuse cot=" in (tmp_path / "res" / "coconut_arithmetic.cot_coconut.md").read_text()
    with pytest.raises(ConfigError, match="not a finished run"):
        reproduce_mod.reproduce(
            "coconut_arithmetic", "tiny", ["cot"], common, "c", tmp_path / "res", reuse={"cot": tmp_path}
        )
    with pytest.raises(ConfigError, match="'atp_latent' is not a row of this run"):
        reproduce_mod.reproduce(
            "coconut_arithmetic", "tiny", ["cot"], common, "c", tmp_path / "res", reuse={"atp_latent": tmp_path}
        )


def test_val_curves_collects_validation_rows_and_names_a_missing_log(tmp_path, capsys):
    script = _experiment_script("val_curves")
    run = tmp_path / "exp" / "r1"
    (run / "logs").mkdir(parents=True)
    (run / "logs" / "metrics.csv").write_text(
        "epoch,step,train/loss,val/accuracy,val/loss\n0,0,,0.5,2.0\n0,9,1.5,,\n0,19,,0.75,1.0\n", encoding="utf-8"
    )
    out = tmp_path / "curves.csv"
    assert script.main([str(run), "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines == ["run,epoch,step,val/accuracy,val/loss", "exp/r1,0,0,0.5,2.0", "exp/r1,0,19,0.75,1.0"]
    assert script.main([str(tmp_path / "nothing"), "--out", str(out)]) == 2
    assert "no logs/metrics.csv" in capsys.readouterr().err
    assert out.read_text().splitlines() == lines  # the failed call left the earlier file as it was
