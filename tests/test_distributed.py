"""Training past one process: ddp over 2 CPU processes (gloo, started by torchrun) equals 1 process over the same
global batch; checkpoints keep only trainable weights; strategy settings are checked and errors name their key.

Why the two runs see the same global batches: both run ``strategy: ddp``, so Lightning swaps the datamodule's
shuffling sampler for a ``DistributedSampler`` (shuffle on, seed = ``config.seed`` through ``PL_GLOBAL_SEED``, the
epoch set by Lightning each epoch). With R ranks it draws one permutation ``perm`` of the 8 training questions per
epoch and gives rank r the positions ``perm[r::R]``; a rank's k-th micro-batch of B/R is ``perm[r::R][k*B/R:
(k+1)*B/R]``, so the union over the ranks of their k-th micro-batches is ``perm[k*B:(k+1)*B]``: exactly the 1-process
run's k-th batch of B. DDP averages the per-rank gradients; each rank's loss is a token mean over its micro-batch,
so the average equals the 1-process token mean only where every rank holds as many label tokens: true of the no-CoT
arithmetic answers (all the same length, checked below). Dropout is off, and every rank builds the same initial
weights from the same seed, so the only differences left are float summation orders.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from latentlab.configs import load_config
from latentlab.distributed import launch_rank, trainer_strategy, unwrapped_name, wrap_layer_classes
from latentlab.errors import ConfigError
from latentlab.training import fit
from tests.conftest import REPO, tiny_memory_overrides
from tests.test_reasoning_task import TINY_COT, tiny

TINY_MEMORY = REPO / "paper_configs/tiny/latent_memory_text.yaml"
GLOBAL_BATCH = 4
LAUNCH_TIMEOUT_S = 170


def reasoning_overrides(tmp_path: Path, world: int, **extra) -> dict:
    """The tiny no-CoT run, as ``world`` ddp processes on CPU, each with GLOBAL_BATCH / world questions a step."""
    return tiny(
        tmp_path,
        "no_cot",
        **{
            "reasoning.dropout": 0.0,
            "reasoning.data.batch_size": GLOBAL_BATCH // world,
            "trainer.max_steps": 4,  # 2 epochs of 2 steps: the second epoch's order comes from set_epoch
            "trainer.accelerator": "cpu",
            "trainer.strategy": "ddp",
            "trainer.devices": world,
            "output_dir": str(tmp_path / "runs"),
            **extra,
        },
    )


def memory_overrides(tmp_path: Path) -> dict:
    """The tiny latent-memory run (frozen bases, LoRA adapters) on 2 ddp processes."""
    return {
        **tiny_memory_overrides(tmp_path),
        "trainer.max_steps": 2,
        "trainer.accelerator": "cpu",
        "trainer.strategy": "ddp",
        "trainer.devices": 2,
    }


def torchrun(nproc: int, specs: list[dict], folder: Path) -> subprocess.Popen:
    """``tests/ddp_fit.py`` on ``nproc`` local processes through torchrun, one thread each."""
    spec_path = folder / f"spec{nproc}.json"
    spec_path.write_text(json.dumps(specs))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    log = (folder / f"torchrun{nproc}.log").open("w")
    return subprocess.Popen(
        [*command, "-m", "tests.ddp_fit", str(spec_path)], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
    )


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """One 2-process launch (the reasoning run unnamed, then the memory run) and, at the same time, the 1-process
    reference; returns where each wrote its record."""
    tmp = tmp_path_factory.mktemp("ddp")
    two, one = tmp / "two", tmp / "one"
    two.mkdir(), one.mkdir()
    specs_two = [
        {"config": str(TINY_COT), "overrides": reasoning_overrides(two, 2), "run": None, "out": str(two / "cot.json")},
        {"config": str(TINY_MEMORY), "overrides": memory_overrides(two), "run": "m", "out": str(two / "memory.json")},
    ]
    specs_one = [
        {"config": str(TINY_COT), "overrides": reasoning_overrides(one, 1), "run": "r", "out": str(one / "cot.json")}
    ]
    runs = {"two": torchrun(2, specs_two, two), "one": torchrun(1, specs_one, one)}
    codes = {name: run.wait(timeout=LAUNCH_TIMEOUT_S) for name, run in runs.items()}
    return {"two": two, "one": one, "codes": codes}


def read_record(folder: Path, name: str, launched: dict) -> dict:
    path = folder / f"{name}.json"
    if not path.exists():
        log = "\n".join(
            (folder / f"torchrun{n}.log").read_text()[-3000:] for n in (1, 2) if (folder / f"torchrun{n}.log").exists()
        )
        pytest.fail(f"{path} was not written (exit codes {launched['codes']}); torchrun log:\n{log}")
    return json.loads(path.read_text())


def test_two_ddp_processes_equal_one_process_over_the_same_global_batch(launched, tmp_path):
    assert launched["codes"] == {"two": 0, "one": 0}
    two, one = read_record(launched["two"], "cot", launched), read_record(launched["one"], "cot", launched)
    assert len(one["curve"]) == len(two["curve"]) == 4
    torch.testing.assert_close(torch.tensor(two["curve"]), torch.tensor(one["curve"]), atol=1e-5, rtol=0)
    weights = {
        name: torch.load(Path(run["run_dir"]) / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
        for name, run in (("two", two), ("one", one))
    }
    assert weights["two"].keys() == weights["one"].keys()
    for key, value in weights["one"].items():
        torch.testing.assert_close(weights["two"][key], value, atol=1e-6, rtol=0)
    moved = max(float((value - weights["two"][key]).abs().max()) for key, value in weights["one"].items())
    assert moved < 1e-6
    # Validation ran on each rank's half of the questions; the record holds the mean over the ranks.
    for key, value in one["metrics"]["val_after"].items():
        assert two["metrics"]["val_after"][key] == pytest.approx(value, abs=1e-5), key
    assert two["metrics"]["global_step"] == one["metrics"]["global_step"] == 4

    # The claim of the module docstring that makes the token means add up: every answer has as many label tokens.
    from latentlab.tasks import task_of

    config = load_config(TINY_COT, reasoning_overrides(tmp_path, 1))
    data = task_of(config).build(config).datamodule
    data.setup("fit")
    counts = {int(n) for batch in data.train_dataloader() for n in (batch.thoughts.suffix_labels != -100).sum(dim=1)}
    assert len(counts) == 1, counts


def test_only_rank_zero_writes_the_run_records(launched):
    """The 2-process run was unnamed: each rank makes its own timestamp, yet only rank 0's directory exists, holding
    one complete run (no temp files left by concurrent writers)."""
    run_dir = Path(read_record(launched["two"], "cot", launched)["run_dir"])
    assert [p.name for p in run_dir.parent.iterdir()] == [run_dir.name]
    names = {p.name for p in run_dir.iterdir()}
    assert {"config.yaml", "run.json", "metrics.json", "last.ckpt", "logs", "tb"} <= names
    assert not [p for p in run_dir.rglob("*") if p.name.endswith(".tmp")]
    assert json.loads((run_dir / "run.json").read_text())["global_step"] == 4


def test_a_ddp_checkpoint_holds_only_the_trainable_weights(launched):
    record = read_record(launched["two"], "memory", launched)
    assert record["metrics"]["global_step"] == 2
    state = torch.load(Path(record["run_dir"]) / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert state and all(("lora_" in k) or k.startswith("compressor.") for k in state)
    assert not any("embed_tokens" in k or "generator_lm" in k for k in state)  # frozen bases are not stored


# --------------------------------------------------------------------------- config errors and strategy objects


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"trainer.strategy": "dpp"}, r"key 'trainer.strategy': expected one of .*did you mean 'ddp'"),
        ({"trainer.num_nodes": 0}, r"key 'trainer.num_nodes': must be >= 1, got 0"),
        (
            {"trainer.strategy": "ddp", "trainer.fsdp": {"wrap_layers": ["GPT2Block"]}},
            r"key 'trainer.fsdp': is only read with strategy 'fsdp'",
        ),
        ({"trainer.process_group_backend": "gloo"}, r"key 'trainer.process_group_backend': is only read with"),
        (
            {"trainer.strategy": "deepspeed", "trainer.deepspeed": {"stage": 1, "offload_optimizer": True}},
            r"key 'trainer.deepspeed.offload_optimizer': needs stage 2 or 3",
        ),
        ({"trainer.strategy": "deepspeed", "trainer.deepspeed": {"stage": 4}}, r"'trainer.deepspeed.stage'"),
    ],
)
def test_bad_strategy_settings_name_their_key(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TINY_COT, {**tiny(tmp_path, "no_cot"), **overrides})


def test_an_fsdp_wrap_class_the_model_lacks_names_the_key_and_the_model_layers(tmp_path):
    overrides = {**tiny(tmp_path, "no_cot"), "trainer.strategy": "fsdp", "trainer.fsdp": {"wrap_layers": ["Block"]}}
    with pytest.raises(ConfigError, match=r"'trainer.fsdp.wrap_layers'.*'Block'.*layer classes are: GPT2Block"):
        fit(load_config(TINY_COT, overrides), run_name="f")
    assert not (tmp_path / "runs").exists()  # refused before anything was written
    fine = {**overrides, "trainer.fsdp": {"wrap_layers": ["GPT2Block"]}, "trainer.accelerator": "cpu"}
    with pytest.raises(ConfigError, match=r"'trainer.strategy' is 'fsdp', which Lightning runs on GPUs only"):
        fit(load_config(TINY_COT, fine), run_name="f")
    assert not (tmp_path / "runs").exists()


def test_deepspeed_without_the_package_is_an_error_at_fit_naming_the_key(tmp_path):
    import importlib.util

    if importlib.util.find_spec("deepspeed") is not None:
        pytest.skip("deepspeed is installed here")
    config = load_config(TINY_COT, {**tiny(tmp_path, "no_cot"), "trainer.strategy": "deepspeed"})  # loads fine
    with pytest.raises(ConfigError, match=r"'trainer.strategy' is 'deepspeed' but .*pip install deepspeed"):
        fit(config, run_name="d")
    assert not (tmp_path / "runs").exists()


def test_strategy_objects_are_lightnings_with_the_configured_settings(tmp_path):
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    from latentlab.memory.module import LatentMemoryModule

    config = load_config(TINY_MEMORY, {**memory_overrides(tmp_path), "trainer.process_group_backend": "gloo"})
    module = LatentMemoryModule(config)
    ddp = trainer_strategy(config, module)
    assert isinstance(ddp, DDPStrategy) and ddp._process_group_backend == "gloo"
    gpu = {**memory_overrides(tmp_path), "trainer.strategy": "fsdp", "trainer.accelerator": "gpu"}
    fsdp = trainer_strategy(load_config(TINY_MEMORY, gpu), module)  # built without a GPU; fit would check for one
    assert isinstance(fsdp, FSDPStrategy) and fsdp.kwargs["use_orig_params"] is True
    policy = fsdp.kwargs["auto_wrap_policy"]
    assert isinstance(policy, ModuleWrapPolicy) and set(policy._module_classes) == {LlamaDecoderLayer}
    # Found from the model (LoRA-wrapped bases included), or named; the reasoner's GPT-2 has GPT2Block.
    assert wrap_layer_classes(module, []) == {LlamaDecoderLayer}
    from latentlab.reasoning.module import LatentCoTModule

    reasoner = LatentCoTModule(load_config(TINY_COT, tiny(tmp_path, "no_cot")))  # TINY_REASONER: a GPT-2
    assert {c.__name__ for c in wrap_layer_classes(reasoner, [])} == {"GPT2Block"}
    assert unwrapped_name("a.layers.0._fsdp_wrapped_module.q.weight") == "a.layers.0.q.weight"


@pytest.mark.parametrize(
    ("env", "devices", "rank"),
    [
        ({}, 1, 0),
        ({"RANK": "3", "LOCAL_RANK": "1"}, 2, 3),  # torchrun
        ({"SLURM_NTASKS": "4", "SLURM_PROCID": "2"}, 2, 2),  # srun
        ({"SLURM_NTASKS": "1", "SLURM_PROCID": "0", "LOCAL_RANK": "1"}, 2, 1),  # Lightning's launcher in a Slurm job
        ({"LOCAL_RANK": "1", "NODE_RANK": "1"}, 2, 3),  # Lightning's launcher, second node
    ],
)
def test_launch_rank_reads_what_each_launcher_sets(monkeypatch, env, devices, rank):
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_NTASKS", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert launch_rank(devices) == rank
