"""Strict experiment YAMLs: every shipped config loads; typos, wrong types and missing files name the key."""

import re
from pathlib import Path

import pytest
import yaml

from latentlab.configs import load_config, parse_overrides, resolve_path
from latentlab.configs.loader import REPLACED_MAPPINGS, _read_yaml
from latentlab.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
BENCHMARK_LISTS = sorted((REPO / "paper_configs").rglob("*_benchmarks.yaml"))
"""Benchmark lists that experiments/ scripts read, not experiment configs (tests/test_low_difficulty.py reads them)."""
CONFIGS = sorted(set((REPO / "paper_configs").rglob("*.yaml")) - set(BENCHMARK_LISTS))


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(REPO)) for p in CONFIGS])
def test_every_paper_config_loads(path):
    config = load_config(path)
    assert config.source_file == str(path)


def test_there_are_configs():
    assert any("tiny" in p.parts for p in CONFIGS) and len(CONFIGS) >= 2


TINY = sorted((REPO / "paper_configs/tiny").glob("*.yaml"))
_ABSENT = object()
_REASON = re.compile(r"\s+#\s*\S.*\w")  # whitespace, '#', then some words


def _tiny_leaves(mapping: yaml.MappingNode, prefix: str = ""):
    """(dotted key, key node, value node) of every leaf a YAML mapping node sets: block mappings are walked into;
    a flow mapping ({r: 16, alpha: 32}), a `model` value and any scalar or list is one leaf."""
    for key_node, value_node in mapping.value:
        dotted = f"{prefix}{key_node.value}"
        if (
            isinstance(value_node, yaml.MappingNode)
            and not value_node.flow_style
            and key_node.value not in REPLACED_MAPPINGS
        ):
            yield from _tiny_leaves(value_node, dotted + ".")
        else:
            yield dotted, key_node, value_node


def _lookup(data, dotted: str):
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return _ABSENT
        data = data[part]
    return data


def _same_scalar(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return a is b
    if isinstance(a, (int, float, str)) and isinstance(b, (int, float, str)) and a != b:
        try:  # `1e-4` (no dot) reads as a string; the loader makes it the number 1.0e-4
            return float(a) == float(b)
        except ValueError:
            return False
    return a == b


def _changes(value, base, key: str) -> bool:
    """Whether setting ``value`` over ``base`` changes it: a mapping (not `model`, which replaces) merges into its
    base, so it changes it when at least one key it sets does."""
    if base is _ABSENT:
        return True
    if isinstance(value, dict) and isinstance(base, dict) and key not in REPLACED_MAPPINGS:
        return any(_changes(v, base.get(k, _ABSENT), k) for k, v in value.items())
    if isinstance(value, list) and isinstance(base, list):
        return len(value) != len(base) or any(_changes(v, b, "") for v, b in zip(value, base))
    return not _same_scalar(value, base)


def _comment_after(lines: list[str], key_node, value_node) -> str:
    """The text after a leaf on its key's line: after the value when it ends there, else after the key's colon."""
    line = key_node.start_mark.line
    if value_node.end_mark.line == line:
        return lines[line][value_node.end_mark.column :]
    return lines[line][key_node.end_mark.column :].lstrip().removeprefix(":")


@pytest.mark.parametrize("path", TINY, ids=[p.name for p in TINY])
def test_tiny_twin_sets_only_changed_values_each_with_a_reason(path):
    """A tiny twin lists only what differs from its base chain, each value on a line with its `# reason`."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    root = yaml.compose(text)
    assert isinstance(root, yaml.MappingNode), f"{path.name}: expected a mapping at the top level"
    base = {k.value: v for k, v in root.value}.get("base")
    assert isinstance(base, yaml.ScalarNode) and base.value, f"{path.name}: a tiny twin needs a `base:` config"
    base_data = _read_yaml((path.parent / base.value).resolve())
    problems = []
    for dotted, key_node, value_node in _tiny_leaves(root):
        if dotted in ("base", "name"):
            continue
        where = f"{path.name}:{key_node.start_mark.line + 1} '{dotted}'"
        value = yaml.safe_load(yaml.serialize(value_node))
        base_value = _lookup(base_data, dotted)
        if not _changes(value, base_value, dotted.rsplit(".", 1)[-1]):
            problems.append(f"{where}: {value!r} repeats the base value; delete the key")
        if not _REASON.match(_comment_after(lines, key_node, value_node)):
            problems.append(f"{where}: no `# reason` comment on its line")
    assert not problems, "\n".join(problems)


def test_tiny_twin_check_catches_a_repeat_and_a_missing_reason():
    """The helpers above flag what the test is for (so a vacuous pass would show here)."""
    text = "a:\n  b: {r: 16, alpha: 32}   # smaller\n  c: 3\n  model: {tiny: {layers: 2}}  # tiny\n"
    root = yaml.compose(text)
    leaves = {dotted: (k, v) for dotted, k, v in _tiny_leaves(root)}
    assert list(leaves) == ["a.b", "a.c", "a.model"]
    lines = text.splitlines()
    assert _REASON.match(_comment_after(lines, *leaves["a.b"]))
    assert not _REASON.match(_comment_after(lines, *leaves["a.c"]))
    assert _changes({"r": 16, "alpha": 32}, {"r": 16, "alpha": 16, "dropout": 0.1}, "lora")
    assert not _changes({"r": 16, "alpha": 32}, {"r": 16, "alpha": 32, "dropout": 0.1}, "lora")
    assert _changes({"tiny": {"layers": 2}}, {"tiny": {"layers": 2, "hidden": 8}}, "model")  # model replaces
    assert not _changes(1.0e-4, "1e-4", "lr") and _changes(None, "x.txt", "train") and _changes(3, _ABSENT, "c")
    assert _changes(True, 1, "flag") and _changes(0, None, "n") and not _changes([1, "a"], [1.0, "a"], "xs")


def test_paper_latent_memory_config_values():
    paper = load_config(REPO / "paper_configs/latent_memory/text_llama1b_llama8b.yaml")
    assert paper.compressor.compress_lora.r == 64 and paper.compressor.compress_lora.alpha == 128
    assert paper.data.batch_size * paper.trainer.accumulate_grad_batches == 32
    assert (paper.loss.recon_weight, paper.loss.contrast_weight, paper.loss.distill_weight) == (0.5, 0.2, 1.0)


def _leaf_keys(data: dict, prefix: str = "") -> set[str]:
    """Dotted keys of every value a resolved YAML sets (a model spec, replaced whole, is one value)."""
    keys = set()
    for key, value in data.items():
        if isinstance(value, dict) and key not in REPLACED_MAPPINGS:
            keys |= _leaf_keys(value, f"{prefix}{key}.")
        else:
            keys.add(f"{prefix}{key}")
    return keys


def test_webqa_paper_and_tiny_configs_differ_only_in_values():
    """The paper-scale WebQA config sets every key its tiny twin changes (and no other), and both load."""
    paper_path = REPO / "paper_configs/latent_memory/webqa_llava7b_llava13b.yaml"
    tiny_path = REPO / "paper_configs/tiny/latent_memory_webqa.yaml"
    assert _leaf_keys(_read_yaml(paper_path)) == _leaf_keys(_read_yaml(tiny_path))
    paper, tiny = load_config(paper_path), load_config(tiny_path)
    assert paper.compressor.backbone.model == "llava-hf/llava-1.5-7b-hf"
    assert paper.generator.backbone.model == "llava-hf/llava-1.5-13b-hf"
    assert paper.compressor.vision.projector_from == paper.compressor.backbone.model
    assert paper.compressor.vision.patch_features == tiny.compressor.vision.patch_features == "penultimate"
    assert not paper.compressor.vision.trains_tower and not paper.compressor.vision.trains_projector
    assert tiny.compressor.vision.trains_tower and tiny.compressor.vision.trains_projector
    assert paper.compressor.compress_lora.r == 64 and paper.compressor.compress_lora.alpha == 128
    image = paper.loss.image
    assert (image.contrast_weight, image.distill_weight, image.title_recon_weight, image.embed_recon_weight) == (
        0.2,
        2.0,
        0.5,
        5.0,
    )
    assert paper.eval.f1 == tiny.eval.f1 == "webqa" and paper.data.source == tiny.data.source == "jsonl"


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
