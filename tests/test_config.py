"""Strict experiment YAMLs: every shipped config loads; typos, wrong types and missing files name the key."""

from pathlib import Path

import pytest

from latentlab.configs import load_config, parse_overrides, resolve_path
from latentlab.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "paper_configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(REPO)) for p in CONFIGS])
def test_every_paper_config_loads(path):
    config = load_config(path)
    assert config.source_file == str(path)


def test_there_are_configs():
    assert any("tiny" in p.parts for p in CONFIGS) and len(CONFIGS) >= 2


def _flatten(data, prefix=""):
    out = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and key != "model":
            out.update(_flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def test_tiny_twin_differs_from_paper_only_in_values():
    import dataclasses

    tiny = load_config(REPO / "paper_configs/tiny/latent_memory_text.yaml")
    paper = load_config(REPO / "paper_configs/latent_memory/text_llama1b_llama8b.yaml")
    flat_tiny, flat_paper = _flatten(dataclasses.asdict(tiny)), _flatten(dataclasses.asdict(paper))
    assert flat_tiny.keys() == flat_paper.keys()
    assert paper.compressor.compress_lora.r == 64 and paper.compressor.compress_lora.alpha == 128
    assert paper.data.batch_size * paper.trainer.accumulate_grad_batches == 32
    assert (paper.loss.recon_weight, paper.loss.contrast_weight, paper.loss.distill_weight) == (0.5, 0.2, 1.0)


def test_misspelled_key_names_file_key_and_suggestion(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("trainer:\n  max_step: 10\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert "bad.yaml" in message and "'trainer.max_step'" in message and "did you mean 'trainer.max_steps'" in message


def test_wrong_type_and_bad_literal(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("trainer:\n  max_steps: ten\n")
    with pytest.raises(ConfigError, match=r"'trainer.max_steps': expected an integer, got 'ten'"):
        load_config(path)
    path.write_text("generator:\n  slot_format: compakt\n")
    with pytest.raises(ConfigError, match="did you mean 'compact'"):
        load_config(path)


def test_overrides_apply_and_are_checked(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("name: x\n")
    config = load_config(path, parse_overrides(["--trainer.max_steps", "10", "--loss.temperature=0.05"]))
    assert config.trainer.max_steps == 10 and config.loss.temperature == 0.05
    with pytest.raises(ConfigError, match=r"command-line overrides.*'trainer.max_stepz'"):
        load_config(path, parse_overrides(["--trainer.max_stepz", "10"]))
    with pytest.raises(ConfigError, match="missing a value"):
        parse_overrides(["--trainer.max_steps"])


def test_base_inheritance_and_missing_base(tmp_path):
    (tmp_path / "base.yaml").write_text("name: base\nseed: 3\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\nname: child\n")
    config = load_config(tmp_path / "child.yaml")
    assert (config.name, config.seed) == ("child", 3)
    (tmp_path / "orphan.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="orphan.yaml: key 'base': file not found"):
        load_config(tmp_path / "orphan.yaml")


def test_missing_data_file_names_key_and_yaml(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("data:\n  source: jsonl\n  train: no/such/file.jsonl\n")
    config = load_config(path)
    with pytest.raises(ConfigError, match=r"cfg\.yaml: key 'data.train': file not found: .*no/such/file.jsonl"):
        resolve_path(config, "data.train", config.data.train)


def test_cross_field_check(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("data:\n  source: jsonl\n")
    with pytest.raises(ConfigError, match="'data.train'.*training file is required"):
        load_config(path)


def test_cli_reports_config_errors_without_traceback(tmp_path, capsys):
    from latentlab.cli import main

    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  lr_max: 0.1\n")
    assert main(["fit", str(path)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "'optim.lr_max'" in err and "Traceback" not in err
    assert main(["fit", str(path), "--optim.lrr", "0.1"]) == 2


def test_exponent_without_dot_is_a_number(tmp_path):
    path = tmp_path / "lr.yaml"
    path.write_text("optim:\n  lr: 1e-4\n")
    assert load_config(path).optim.lr == 1e-4
    path.write_text("optim:\n  lr: fast\n")
    with pytest.raises(ConfigError, match="'optim.lr': expected a number, got 'fast'"):
        load_config(path)
