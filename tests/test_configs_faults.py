"""Torch-free configs with per-task sections, and the config faults a hostile new user found (issue 13)."""

import subprocess
import sys
from pathlib import Path

import pytest

from latentlab.configs import (
    TASK_CONFIGS,
    IndexConfig,
    MemoryExperimentConfig,
    ReasoningExperimentConfig,
    load_config,
    parse_overrides,
)
from latentlab.configs.loader import parse_pairs
from latentlab.errors import ConfigError
from latentlab.registry import Registry, RegistryError

REPO = Path(__file__).resolve().parents[1]
TINY_MEMORY = REPO / "paper_configs/tiny/latent_memory_text.yaml"
TINY_COT = REPO / "paper_configs/tiny/coconut_arithmetic.yaml"


def test_loading_every_paper_config_imports_no_torch_or_model_code():
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from latentlab.configs import load_config\n"
        "paths = sorted(p for p in Path('paper_configs').rglob('*.yaml') if not p.name.endswith('_benchmarks.yaml'))\n"
        "assert paths\n"
        "for p in paths:\n"
        "    load_config(p)\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'lightning', 'faiss',"
        " 'peft', 'numpy') or m.startswith(('latentlab.memory', 'latentlab.reasoning', 'latentlab.eval')))\n"
        "print(len(paths), heavy)\n"
        "assert not heavy, heavy\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr + out.stdout


def test_each_task_has_its_own_experiment_class():
    assert isinstance(load_config(TINY_MEMORY), MemoryExperimentConfig)
    cot = load_config(TINY_COT)
    assert isinstance(cot, ReasoningExperimentConfig)
    assert not hasattr(cot, "compressor") and not hasattr(load_config(TINY_MEMORY), "reasoning")
    assert TASK_CONFIGS.names() == ["latent_memory", "latent_cot", "latent_rl"]
    assert TASK_CONFIGS.get("latent_rl").__name__ == "RLExperimentConfig"


def test_reasoning_section_in_a_memory_yaml_is_an_unknown_key(tmp_path):
    path = tmp_path / "mixed.yaml"
    path.write_text("task: latent_memory\nreasoning:\n  method: cot\n")
    with pytest.raises(ConfigError, match=r"mixed.yaml: key 'reasoning': unknown key"):
        load_config(path)
    path.write_text("task: latent_cot\ncompressor:\n  key_dim: 8\n")
    with pytest.raises(ConfigError, match=r"mixed.yaml: key 'compressor': unknown key"):
        load_config(path)


def test_unknown_task_lists_the_known_ones(tmp_path):
    path = tmp_path / "task.yaml"
    path.write_text("task: latent_rl_typo\n")
    with pytest.raises(
        ConfigError, match=r"task.yaml: key 'task': unknown task 'latent_rl_typo' \(known: latent_memory"
    ):
        load_config(path)


def test_registry_refuses_unknown_and_duplicate_names():
    reg: Registry[int] = Registry("widget")
    reg.register("a", 1)

    @reg.register("b")
    def _b():  # decorator form returns the object
        return 2

    assert reg.get("a") == 1 and reg.names() == ["a", "b"] and "b" in reg
    with pytest.raises(RegistryError, match=r"unknown widget 'c' \(known: a, b\)"):
        reg.get("c")
    with pytest.raises(RegistryError, match=r"widget 'a' is registered twice \(known: a, b\)"):
        reg.register("a", 3)


def test_two_trainer_sections_are_an_error_naming_file_line_and_key(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("trainer:\n  max_steps: 5\nname: x\ntrainer:\n  max_epochs: 2\n")
    with pytest.raises(ConfigError, match=r"dup.yaml: line 4: key 'trainer' is given twice \(first on line 1\)"):
        load_config(path)


def test_duplicate_nested_key_is_an_error(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("optim:\n  lr: 0.1\n  lr: 0.2\n")
    with pytest.raises(ConfigError, match=r"line 3: key 'lr' is given twice"):
        load_config(path)


def test_non_utf8_byte_in_a_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: ok\n# caf\xe9\n")
    with pytest.raises(ConfigError, match=r"latin1.yaml: line 2: byte 0xe9 .* is not UTF-8"):
        load_config(path)


def test_override_value_that_is_not_yaml_names_the_flag():
    with pytest.raises(ConfigError, match=r"override --eval.methods: its value is not valid YAML"):
        parse_overrides(["--eval.methods", "[latent,"])
    with pytest.raises(ConfigError, match=r"--set #1: value of 'k' is not valid YAML"):
        parse_pairs("k=[1,", "--set #1")


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("trainer.max_steps", 0, r"'trainer.max_steps': must be >= 1, or -1"),
        ("trainer.max_steps", -5, r"'trainer.max_steps': must be >= 1, or -1"),
        ("optim.lr", -1e-4, r"'optim.lr': must be > 0"),
        ("optim.lr", 0, r"'optim.lr': must be > 0"),
        ("eval.limit", 0, r"'eval.limit': must be >= 1 or null"),
        ("eval.limit", -1, r"'eval.limit': must be >= 1 or null"),
        ("data.limit_train", 0, r"'data.limit_train': must be >= 1 or null"),
        ("data.limit_val", -1, r"'data.limit_val': must be >= 1 or null"),
        ("eval.batch_size", 0, r"'eval.batch_size': must be >= 1"),
        ("generator.max_new_tokens", 0, r"'generator.max_new_tokens': must be >= 1"),
        ("compressor.max_evidence_tokens", -3, r"'compressor.max_evidence_tokens': must be >= 1"),
        ("index.batch_size", 0, r"'index.batch_size': must be a positive integer"),
        ("index.nprobe", 0, r"'index.nprobe': must be a positive integer"),
        ("trainer.checkpoint_every_n_steps", 0, r"'trainer.checkpoint_every_n_steps': must be >= 1"),
        ("trainer.accelerator", "gpus", r"'trainer.accelerator': expected one of"),
        ("compressor.compress_lora.r", 0, r"'compressor.compress_lora.r': must be >= 1"),
        ("eval.methods", ["latent", "latent"], r"'eval.methods\[1\]': 'latent' is listed twice"),
    ],
)
def test_zero_and_negative_settings_are_errors_naming_the_key(key, value, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TINY_MEMORY, {key: value})


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("reasoning.data.limit_train", 0, r"'reasoning.data.limit_train': must be >= 1 or null"),
        ("sampling.max_new_tokens", 0, r"'sampling.max_new_tokens': must be >= 1"),
        ("sampling.temperature", -0.1, r"'sampling.temperature': must be >= 0"),
        ("eval.limit", 0, r"'eval.limit': must be >= 1 or null"),
        ("eval.pass_k", [1, 4], r"'sampling.num_samples': 1 samples cannot give pass@4"),
    ],
)
def test_reasoning_settings_are_checked(key, value, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TINY_COT, {key: value})


def test_sampling_settings_have_one_home():
    config = load_config(TINY_COT, {"sampling.num_samples": 4, "eval.pass_k": [1, 4], "sampling.temperature": 0.5})
    assert (config.sampling.num_samples, config.eval.pass_k, config.sampling.temperature) == (4, [1, 4], 0.5)
    for old in ("reasoning.pass_k", "reasoning.num_samples", "reasoning.max_new_tokens"):
        with pytest.raises(ConfigError, match="unknown key"):
            load_config(TINY_COT, {old: 1})


def test_index_section_is_the_index_spec():
    from latentlab.memory import index

    assert not hasattr(index, "IndexSpec") and index.IndexConfig is IndexConfig  # one class, not two
    assert load_config(TINY_MEMORY, {"index.factory": "HNSW32,Flat"}).index.factory == "HNSW32,Flat"


def test_resolved_configs_written_before_the_configs_package_still_load():
    """Runs and exports of earlier versions dumped every section of every task; they keep loading."""
    import yaml

    from latentlab.configs import config_from_dict, to_dict

    memory = to_dict(load_config(TINY_MEMORY))
    memory["reasoning"] = {"method": "coconut", "max_new_tokens": 64, "pass_k": [1]}
    assert config_from_dict(memory).compressor.key_dim == 256
    cot = to_dict(load_config(TINY_COT))
    sampling, evaluation = cot.pop("sampling"), cot["eval"]
    cot["reasoning"].update(
        max_new_tokens=sampling["max_new_tokens"],
        num_samples=4,
        sample_temperature=0.5,
        thought_noise=0.1,
        pass_k=[1, 4],
    )
    del evaluation["pass_k"]
    cot.update(compressor={"key_dim": 8}, index={"factory": "Flat"}, eval={**evaluation, "methods": ["latent"], "k": 5})
    old = config_from_dict(yaml.safe_load(yaml.safe_dump(cot)))
    assert (old.sampling.num_samples, old.sampling.temperature, old.sampling.thought_noise) == (4, 0.5, 0.1)
    assert old.eval.pass_k == [1, 4] and not hasattr(old, "compressor")
