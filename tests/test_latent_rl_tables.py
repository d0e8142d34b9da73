"""experiments/latent_rl_tables.py: its rows and configs, the tables it writes from finished evaluations (every row,
the starts, the rows not built yet), the pass@k plot, and its refusals before any training."""

from __future__ import annotations

import pytest

from latentlab.configs import load_config
from latentlab.errors import ConfigError, LatentLabError
from tests.conftest import REPO
from tests.test_reasoning_task import _experiment_script


@pytest.fixture(scope="module")
def tables():
    return _experiment_script("latent_rl_tables")


def scored(pass1: float, latent: float = 3.0, shuffled: float | None = 0.2) -> dict:
    row = {f"pass@{k}": min(1.0, pass1 + 0.01 * k) for k in (1, 2, 4, 8, 16, 32)}
    row.update(
        accuracy=pass1 + 0.1,
        sample_reasoning_tokens_mean=latent + 1,
        latent_tokens_mean=latent,
        questions=500,
    )
    if shuffled is not None:
        row["shuffled_thought_accuracy"] = shuffled
    return row


def result(start: float, final: float, shuffled: float | None = 0.2) -> dict:
    curve = [{"step": 1.0, "train/invalid_fraction": 0.1, "train/no_exit_fraction": 0.05}]
    return {
        "start": [scored(start, shuffled=shuffled)],
        "runs": [
            {"seed": 0, "eval": scored(final, shuffled=shuffled), "fit_s": 600.0, "curve": curve},
            {"seed": 1, "eval": scored(final + 0.02, shuffled=shuffled), "fit_s": 620.0, "curve": curve},
        ],
    }


def test_every_row_config_loads_and_starts_from_its_supervised_method(tables):
    for key, rl_row in tables.ROWS.items():
        config = load_config(REPO / rl_row.row.config)
        start = load_config(REPO / tables.STARTS[rl_row.start].config)
        assert config.task == "latent_rl" and config.reasoning.method == start.reasoning.method, key
        assert config.reasoning.init_from.endswith(f"{start.name}/reproduce"), key
        if config.soft_thinking is not None:
            assert key == "soft_grpo"
        if config.reasoning.method == "atp_latent":  # the CVAE's shapes and prior must be its SFT run's
            shaped = ("latent_dim", "thoughts_per_step", "prior", "mlp_dim", "text_embed_dim", "text_dim",
                      "decoder_embed_dim", "decoder_hidden_dim", "stop_head")  # fmt: skip
            rl_cvae, sft_cvae = config.reasoning.cvae, start.reasoning.cvae
            assert {k: getattr(rl_cvae, k) for k in shaped} == {k: getattr(sft_cvae, k) for k in shaped}, key
    for table, keys in tables.TABLE_ROWS.items():
        assert set(keys) <= set(tables.ROWS), table


def test_main_and_ablation_tables_from_finished_evaluations(tables, tmp_path):
    results = {
        "latent_grpo": result(0.60, 0.70),
        "grpo": result(0.71, 0.84, shuffled=None),
        "latent_grpo_two_sided": result(0.60, 0.64),
        "latent_grpo_no_masking": result(0.60, 0.66),
        "latent_grpo_no_first_token": result(0.60, 0.68),
    }
    main = tables.write("main", ["latent_grpo", "grpo"], results, tmp_path / "main", "cmd")
    methods = [line["method"] for line in main]
    assert methods[:4] == ["Latent-SFT (start of Latent-GRPO)", "Latent-GRPO", "CoT SFT (start of GRPO (discrete))",
                           "GRPO (discrete)"]  # fmt: skip
    assert main[1]["gain_pass@1_per_seed"] == "+0.100 / +0.120"  # both against the one start evaluation
    assert main[1]["pass@1"] == "0.720 ± 0.014"  # pass@1 = 0.70 + 0.01 and 0.72 + 0.01
    assert main[3]["shuffled_thought_accuracy"].startswith("n/a")
    assert len(main) == 4  # only the rows that ran
    assert (tmp_path / "main.md").is_file() and (tmp_path / "main.png").stat().st_size > 1000
    keys = [k for k in tables.TABLE_ROWS["ablations"] if k.startswith("latent_grpo")]
    ablations = tables.write("ablations", keys, results, tmp_path / "ablations", "cmd")
    assert [line["method"] for line in ablations][:2] == ["Latent-SFT (start of Latent-GRPO)", "Latent-GRPO"]
    assert sum(line["method"].startswith("Latent-SFT") for line in ablations) == 1  # one shared start
    assert ablations[1]["train_no_exit_fraction"] == "0.050"


def test_refusals_before_any_training(tables, tmp_path):
    (tmp_path / "latent_rl_main.md").write_text("kept\n")
    with pytest.raises(LatentLabError, match="already holds results"):
        tables.run_tables(["main"], [0], None, str(tmp_path), overwrite=False)
    assert (tmp_path / "latent_rl_main.md").read_text() == "kept\n"
    with pytest.raises(ConfigError, match="unknown"):
        tables.run_tables(["main"], [0], ["nope"], str(tmp_path), overwrite=False)
    assert tables.main(["--seeds", "1", "1"]) == 2
    assert tables.main(["--jobs", "0"]) == 2
