"""Runs, results folders, memories and prompts that a failed, repeated or hostile command must not corrupt
(issue 13): each test names the case it covers and fails on the code before the fix."""

import csv
import json
from pathlib import Path

import lightning as L
import pytest
import torch

from latentlab.cli import main
from latentlab.configs import load_config
from latentlab.data.schema import Evidence
from latentlab.errors import ConfigError, DataError, LatentLabError
from latentlab.io import ResultsExistError, staged_dir
from latentlab.memory.checkpoint import WEIGHTS, export_compressor, load_model
from latentlab.memory.evaluate import evaluate
from latentlab.training import fit
from tests.conftest import REPO

TINY_YAML = REPO / "paper_configs/tiny/latent_memory_text.yaml"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One finished 4-step tiny run and its export, shared by this module's tests (they copy what they change)."""
    from tests.conftest import TINY_LLAMA

    tmp = tmp_path_factory.mktemp("faults")
    overrides = {
        "compressor.backbone.model": TINY_LLAMA,
        "generator.backbone.model": TINY_LLAMA,
        "compressor.key_dim": 32,
        "data.synthetic.num_people": 30,
        "data.batch_size": 2,
        "data.limit_val": 2,
        "trainer.max_steps": 4,
        "trainer.progress_bar": False,
        "trainer.checkpoint_every_n_steps": 2,
        "trainer.log_every_n_steps": 1,
        "generator.max_new_tokens": 3,
        "eval.limit": 3,
        "output_dir": str(tmp / "runs"),
        "eval.output_dir": str(tmp / "results"),
    }
    config = load_config(TINY_YAML, overrides)
    run_dir = fit(config, run_name="r").run_dir
    export_compressor(load_model(run_dir), tmp / "export")
    return overrides, run_dir, tmp


def _csv_rows(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


# ----------------------------------------------------------------- fit --resume


def test_failed_resume_with_another_config_writes_nothing_and_the_run_still_loads(run, tmp_path):
    overrides, run_dir, _ = run
    before = {name: (run_dir / name).read_bytes() for name in ("config.yaml", "run.json")}
    changed = load_config(TINY_YAML, {**overrides, "loss.temperature": 0.5, "trainer.max_steps": 6})
    with pytest.raises(ConfigError, match=r"loss.temperature: 0.07 in the run, 0.5 now"):
        fit(changed, resume=run_dir)
    assert {name: (run_dir / name).read_bytes() for name in before} == before
    assert load_model(run_dir).config.loss.temperature == pytest.approx(0.07)


def test_resume_of_a_truncated_last_ckpt_names_the_file_and_writes_nothing(run, tmp_path):
    import shutil

    overrides, run_dir, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    data = (copy / "last.ckpt").read_bytes()
    (copy / "last.ckpt").write_bytes(data[: len(data) // 3])
    stamp = (copy / "config.yaml").stat().st_mtime_ns
    with pytest.raises(LatentLabError, match=r"last.ckpt: cannot be read as a checkpoint.*truncated"):
        fit(load_config(TINY_YAML, {**overrides, "trainer.max_steps": 6}), resume=copy)
    assert (copy / "config.yaml").stat().st_mtime_ns == stamp
    assert main(["fit", str(TINY_YAML), "--resume", str(copy), "--trainer.max_steps", "6"]) == 2


def test_resume_of_a_finished_run_appends_to_metrics_csv(run, tmp_path):
    import shutil

    overrides, run_dir, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    first = _csv_rows(copy / "logs" / "metrics.csv")
    steps_before = {r["step"] for r in first if r.get("train/loss")}
    assert steps_before
    fit(load_config(TINY_YAML, {**overrides, "trainer.max_steps": 6}), resume=copy)
    rows = _csv_rows(copy / "logs" / "metrics.csv")
    resumed_at = max(int(r["step"]) for r in first)  # the resumed run validates there first, then trains on
    kept = [r for r in first if int(r["step"]) < resumed_at]
    assert kept and rows[: len(kept)] == [{**r, **{k: "" for k in rows[0].keys() - r.keys()}} for r in kept]
    assert len(rows) > len(first)
    assert {r["step"] for r in rows if r.get("train/loss")} > steps_before
    assert not (copy / "logs" / "metrics.before_resume.csv").exists()


def test_resume_drops_the_logged_rows_it_redoes(tmp_path):
    """A run stopped past its last checkpoint logged steps the resume does again: each step stays once."""
    from latentlab.training import _merge_metrics

    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    earlier = [{"step": str(s), "train/loss": f"{s}.0"} for s in range(8)]  # checkpoint at step 5, stopped at 7
    (log_dir / "metrics.csv").write_text("step,train/loss\n5,50.0\n6,60.0\n7,70.0\n8,80.0\n", encoding="utf-8")
    _merge_metrics(log_dir, earlier)
    rows = _csv_rows(log_dir / "metrics.csv")
    assert [r["step"] for r in rows] == [str(s) for s in range(9)]
    assert [r["train/loss"] for r in rows][4:] == ["4.0", "50.0", "60.0", "70.0", "80.0"]


class _Boom(L.Callback):
    def on_train_start(self, trainer, pl_module):
        raise RuntimeError("boom")


def test_failed_fit_leaves_no_half_run_that_blocks_the_rerun(run, tmp_path):
    overrides, _, _ = run
    config = load_config(TINY_YAML, {**overrides, "output_dir": str(tmp_path / "runs"), "trainer.max_steps": 1})
    with pytest.raises(RuntimeError, match="boom"):
        fit(config, run_name="x", callbacks=[_Boom()])
    assert not (tmp_path / "runs" / config.name / "x").exists()
    assert fit(config, run_name="x").metrics["global_step"] == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible here")
def test_gpu_accelerator_without_a_gpu_is_an_error_naming_the_key(run, tmp_path):
    overrides, _, _ = run
    config = load_config(TINY_YAML, {**overrides, "trainer.accelerator": "gpu", "output_dir": str(tmp_path)})
    with pytest.raises(ConfigError, match=r"'trainer.accelerator' is 'gpu' but no GPU is visible"):
        fit(config, run_name="g")
    assert not any(tmp_path.iterdir())


# ----------------------------------------------------------------- evaluate


def test_evaluate_into_an_existing_folder_is_refused_and_overwrite_leaves_no_stale_files(run, tmp_path):
    overrides, _, tmp = run
    config = load_config(TINY_YAML, {**overrides, "eval.methods": ["no_retrieval", "bm25"]})
    out = tmp_path / "res"
    evaluate(config, checkpoint=tmp / "export", out_dir=out)
    assert (out / "predictions.bm25.jsonl").exists()
    with pytest.raises(ResultsExistError, match=r"already holds results; pass --overwrite"):
        evaluate(config, checkpoint=tmp / "export", out_dir=out)
    only = load_config(TINY_YAML, {**overrides, "eval.methods": ["no_retrieval"], "eval.checkpoint": None})
    result = evaluate(only, checkpoint=None, out_dir=out, overwrite=True)  # raw text alone: no compressor needed
    assert [r["method"] for r in result.rows] == ["no_retrieval"]
    assert sorted(p.name for p in out.iterdir()) == [
        "predictions.no_retrieval.jsonl",
        "summary.json",
        "table.csv",
        "table.md",
        "table.png",
    ]
    assert not list(tmp_path.glob(".res.*"))  # no staging folder left behind


def test_a_failing_evaluation_leaves_the_earlier_results_untouched(tmp_path):
    target = tmp_path / "res"
    target.mkdir()
    (target / "table.md").write_text("old")
    with pytest.raises(RuntimeError), staged_dir(target, overwrite=True) as staging:
        (staging / "table.md").write_text("new")
        raise RuntimeError("failed half way")
    assert (target / "table.md").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["res"]


def test_evaluate_honours_the_yaml_instead_of_the_checkpoint_config(run, tmp_path):
    overrides, _, tmp = run
    config = load_config(TINY_YAML, {**overrides, "compressor.max_evidence_tokens": 7, "generator.max_new_tokens": 2})
    model = load_model(tmp / "export", config)
    assert model.config.compressor.max_evidence_tokens == 7 and model.config.generator.max_new_tokens == 2
    assert load_model(tmp / "export").config.compressor.max_evidence_tokens == 48  # the stored value, unused above


def test_a_setting_the_weights_depend_on_is_refused_naming_both_values(run):
    overrides, _, tmp = run
    config = load_config(TINY_YAML, {**overrides, "compressor.key_dim": 16})
    with pytest.raises(ConfigError, match=r"'compressor.key_dim' is 16, but the compressor .* trained with 32"):
        load_model(tmp / "export", config)


def test_a_huge_evidence_text_is_cut_to_the_prompt_budget_and_counted(run):
    overrides, _, tmp = run
    config = load_config(TINY_YAML, {**overrides, "generator.max_item_tokens": 64})
    model = load_model(tmp / "export", config)
    huge = "word " * 400_000  # 2 MB
    prompt = model.prompts.text("Where was Ann born?", [huge, "Ann was born in Oslo."])
    assert prompt.truncated_items == 1
    assert prompt.context_tokens <= 2 * 64 + 30  # two budgets plus the two labels (byte-level tokenizer)
    from latentlab.memory.pipeline import Hit, answer_with_text

    (answer,) = answer_with_text(model, ["Where was Ann born?"], [[Hit("h", 1.0, None, huge)]])
    assert answer.truncated_items == 1 and answer.context_tokens <= 64 + 16  # the budget plus its label


# ----------------------------------------------------------------- index build and the memory commands


def test_index_build_honours_the_yaml_index_factory(run, tmp_path):
    overrides, _, tmp = run
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "".join(json.dumps({"id": f"f{i}", "text": f"Person {i} was born in town {i}."}) + "\n" for i in range(40))
    )
    yaml_path = tmp_path / "cfg.yaml"
    yaml_path.write_text(f"base: {TINY_YAML}\n")
    args = ["index", "build", str(yaml_path), "--corpus", str(corpus), "--out", str(tmp_path / "mem")]
    args += ["--checkpoint", str(tmp / "export"), "--index.factory", "HNSW32,Flat"]
    for key, value in overrides.items():
        args += [f"--{key}", json.dumps(value)]
    assert main(args) == 0
    manifest = json.loads((tmp_path / "mem" / "manifest.json").read_text())
    assert manifest["factory"] == "HNSW32,Flat"


def test_index_build_resolves_a_relative_eval_checkpoint_against_the_config_root(run, tmp_path, monkeypatch):
    overrides, _, tmp = run
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"id": "a", "text": "Ann was born in Oslo."}) + "\n")
    monkeypatch.chdir(tmp_path)  # not the project root: a cwd-relative lookup would fail
    args = ["index", "build", str(TINY_YAML), "--corpus", str(corpus), "--out", str(tmp_path / "mem")]
    args += ["--eval.checkpoint", "artifacts/no_such_compressor"]
    for key, value in overrides.items():
        args += [f"--{key}", json.dumps(value)]
    assert main(args) == 2  # resolved under the project root, and named as missing there
    assert not (tmp_path / "mem").exists()


def test_memory_commands_refuse_empty_or_missing_queries_and_missing_memories(tmp_path, capsys):
    assert main(["ask", str(tmp_path / "nowhere"), "   "]) == 2
    assert "non-empty question" in capsys.readouterr().err
    assert main(["index", "search", str(tmp_path / "nowhere")]) == 2
    assert "non-empty query" in capsys.readouterr().err
    assert main(["index", "search", str(tmp_path / "nowhere"), "Where?"]) == 2
    assert "no such memory directory" in capsys.readouterr().err


def test_a_truncated_weights_file_names_itself(run, tmp_path):
    import shutil

    _, _, tmp = run
    shutil.copytree(tmp / "export", tmp_path / "export")
    data = (tmp_path / "export" / WEIGHTS).read_bytes()
    (tmp_path / "export" / WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(LatentLabError, match=r"weights.safetensors: cannot be read as safetensors.*truncated"):
        load_model(tmp_path / "export")


def test_an_image_item_reaching_the_compressor_is_a_data_error_not_its_file_name(run):
    _, _, tmp = run
    model = load_model(tmp / "export")
    with pytest.raises(DataError, match=r"evidence 'img1'"):
        model.encode_items([Evidence(id="img1", image="chart.png")])


def test_committed_predictions_keep_no_evidence_text():
    files = sorted((REPO / "results").rglob("predictions.*.jsonl"))
    assert files, "expected committed memory predictions under results/"
    for path in files:
        for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            hits = json.loads(line).get("hits", [])
            extra = [sorted(set(h) - {"id", "score"}) for h in hits if set(h) - {"id", "score"}]
            assert not extra, f"{path}:{line_no}: hits carry {extra[0]} (evidence text must not be committed)"
