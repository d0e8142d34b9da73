"""The low-difficulty math benchmarks: GSM-Hard, SVAMP and MultiArith converters (hand-written records in the official
formats, their errors, the real files), the intervals, the benchmark list, and experiments/low_difficulty.py end to end
on a 2-layer random GPT-2 (--config and --checkpoint, a missing benchmark skipped, results refused, repeated exactly)."""

from __future__ import annotations

import csv
import json
import math
from decimal import Decimal
from pathlib import Path

import pytest
import torch

from latentlab.configs import load_config
from latentlab.data.converters import (
    convert_gsm_hard,
    convert_multiarith,
    convert_svamp,
    format_number,
    get_converter,
)
from latentlab.data.schema import CoTExample, read_cot, write_jsonl
from latentlab.errors import ConfigError, DataError
from latentlab.reasoning.data import load_cot_split
from tests.conftest import REPO, shared_file
from tests.test_reasoning_task import TINY_COT, TINY_REASONER, _experiment_script

low_difficulty = _experiment_script("low_difficulty")

# Hand-written records in each official format (invented problems, not the datasets' text).
GSM_HARD = [
    {
        "input": "Ana has 1200000 beads and buys 1.5 times as many. How many beads does she buy?",
        "code": "",
        "target": 1800000.0,
    },
    {"input": " A tank loses 7 litres of 3 every hour. How much is left after 1 hour? ", "code": "", "target": -2.5},
    {"input": "A grain weighs 1 unit split 48000 ways. What is one part?", "code": "", "target": 2.0833e-05},
    {"input": "Pay 3244047.1 split badly.", "code": "", "target": 3244047.0999999996},
]
SVAMP = [
    {"ID": "chal-1", "Body": "Tom had 9 kites. He gave 4 away", "Question": "How many kites does Tom have now?",
     "Equation": "( 9.0 - 4.0 )", "Answer": 5.0, "Type": "Subtraction"},
    {"ID": "chal-7", "Body": "A box holds 5 pens and costs 12.5 dollars.", "Question": "What is the price per pen?",
     "Equation": "( 12.5 / 5.0 )", "Answer": 2.5, "Type": "Common-Division"},
]  # fmt: skip
MULTIARITH = [
    {"iIndex": 3, "lAlignments": [10, 30], "lEquations": ["X=(6.0*7.0)"], "lSolutions": [42.0],
     "sQuestion": " Lily packs 6 boxes with 7 apples each. How many apples does she pack? "},
    {"iIndex": 0, "lAlignments": [4, 20], "lEquations": ["X=(20.0-8.0)"], "lSolutions": [12.0],
     "sQuestion": " Ben has 20 stamps and sells 8. How many are left? "},
]  # fmt: skip


def write_jsonl_lines(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def write_json_list(path: Path, records) -> Path:
    path.write_text(json.dumps(records, indent=1), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------------------------
# Converters on hand-written records


def test_format_number_keeps_the_value_without_dot_zero_or_exponent():
    assert [format_number(v) for v in (6.0, 6, -0.0, -2.5, 2.0107e-06, 1e20, 3244047.0999999996)] == [
        "6",
        "6",
        "0",
        "-2.5",
        "0.0000020107",
        "100000000000000000000",
        "3244047.0999999996",
    ]


def test_gsm_hard_records(tmp_path):
    path = write_jsonl_lines(tmp_path / "gsm_hard_mini.jsonl", GSM_HARD)
    assert convert_gsm_hard(path) == [
        CoTExample("gsm_hard-mini-0", GSM_HARD[0]["input"], [], "1800000"),
        CoTExample("gsm_hard-mini-1", GSM_HARD[1]["input"].strip(), [], "-2.5"),
        CoTExample("gsm_hard-mini-2", GSM_HARD[2]["input"], [], "0.000020833"),
        CoTExample("gsm_hard-mini-3", GSM_HARD[3]["input"], [], "3244047.0999999996"),
    ]


def test_svamp_records(tmp_path):
    path = write_json_list(tmp_path / "SVAMP.json", SVAMP)
    assert convert_svamp(path) == [
        CoTExample("svamp-chal-1", "Tom had 9 kites. He gave 4 away How many kites does Tom have now?", [], "5"),
        CoTExample("svamp-chal-7", "A box holds 5 pens and costs 12.5 dollars. What is the price per pen?", [], "2.5"),
    ]


def test_multiarith_records(tmp_path):
    path = write_json_list(tmp_path / "MultiArith.json", MULTIARITH)
    assert convert_multiarith(path) == [
        CoTExample("multiarith-3", "Lily packs 6 boxes with 7 apples each. How many apples does she pack?", [], "42"),
        CoTExample("multiarith-0", "Ben has 20 stamps and sells 8. How many are left?", [], "12"),
    ]


@pytest.mark.parametrize(
    ("name", "file", "records"),
    [("gsm_hard", "t.jsonl", GSM_HARD), ("svamp", "t.json", SVAMP), ("multiarith", "t.json", MULTIARITH)],
)
def test_registered_readable_back_and_a_config_source(tmp_path, name, file, records):
    path = tmp_path / file
    (write_jsonl_lines if file.endswith(".jsonl") else write_json_list)(path, records)
    converted = get_converter(name)(path)
    assert read_cot(write_jsonl(tmp_path / "out.jsonl", converted)) == converted
    config = load_config(TINY_COT, {"reasoning.data.source": name, "reasoning.data.test": str(path)})
    assert load_cot_split(config, "test") == converted  # reasoning.data.source: <name> reads the official file


GSM_HARD_ERRORS = [
    ('{"input": "Q?", "target": 1.0}\n{"input": "Q?", ', ":2: not valid JSON"),
    ('["Q?", 1.0]\n', ":1: expected a JSON object with 'input' and 'target'"),
    ('{"target": 1.0}\n', ":1 (record 0): missing field 'input' (expected the question"),
    ('{"input": "Q?", "target": 1}\n{"input": "Q?", "target": "51"}\n', ":2 (record 1): field 'target' must be"),
    ('{"input": "Q?", "target": NaN}\n', ":1 (record 0): field 'target' must be the answer as a finite JSON number"),
    ('{"input": "Q?", "target": true}\n', ":1 (record 0): field 'target' must be"),
    ('{"input": "Q?"}\n', ":1 (record 0): missing field 'target' (expected the answer as a finite JSON number"),
    ('{"input": "  ", "target": 2.0}\n', ":1 (record 0): field 'input' must be the question as a non-empty string"),
]


@pytest.mark.parametrize(("text", "expected"), GSM_HARD_ERRORS)
def test_gsm_hard_malformed_names_file_line_record_and_field(tmp_path, text, expected):
    path = tmp_path / "bad.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as err:
        convert_gsm_hard(path)
    assert str(err.value).startswith(f"{path}{expected}"), str(err.value)


def _with(records: list[dict], index: int, **changes) -> list:
    changed = [dict(r) for r in records]
    changed[index].update(changes)
    return [{k: v for k, v in r.items() if v is not ...} for r in changed]


SVAMP_ERRORS = [
    ({"ID": "chal-1"}, ": expected a JSON list of SVAMP problems, got a JSON dict"),
    ([SVAMP[0], "chal-7"], ": record 1: expected an object with 'ID', 'Body', 'Question' and 'Answer'"),
    (_with(SVAMP, 1, ID=...), ": record 1: missing field 'ID' (expected the problem id as a non-empty string"),
    (
        _with(SVAMP, 1, Answer="2.5"),
        ": record 1 (ID chal-7): field 'Answer' must be the answer as a finite JSON number",
    ),
    (_with(SVAMP, 1, Answer=...), ": record 1 (ID chal-7): missing field 'Answer'"),
    (_with(SVAMP, 0, Body=""), ": record 0 (ID chal-1): field 'Body' must be the problem text as a non-empty string"),
    (_with(SVAMP, 0, Question=7), ": record 0 (ID chal-1): field 'Question' must be"),
    (_with(SVAMP, 1, ID="chal-1"), ": record 1 (ID chal-1): id 'svamp-chal-1' is also the id of record 0"),
]


@pytest.mark.parametrize(("records", "expected"), SVAMP_ERRORS)
def test_svamp_malformed_names_file_record_and_field(tmp_path, records, expected):
    path = write_json_list(tmp_path / "SVAMP.json", records)
    with pytest.raises(DataError) as err:
        convert_svamp(path)
    assert str(err.value).startswith(f"{path}{expected}"), str(err.value)


MULTIARITH_ERRORS = [
    ([MULTIARITH[0], 5], ": record 1: expected an object with 'iIndex', 'sQuestion' and 'lSolutions'"),
    (_with(MULTIARITH, 1, iIndex="0"), ": record 1: field 'iIndex' must be the problem index as an integer"),
    (_with(MULTIARITH, 1, iIndex=...), ": record 1: missing field 'iIndex'"),
    (
        _with(MULTIARITH, 1, lSolutions=[]),
        ": record 1 (iIndex 0): field 'lSolutions' must be a list holding exactly one",
    ),
    (_with(MULTIARITH, 1, lSolutions=[1.0, 2.0]), ": record 1 (iIndex 0): field 'lSolutions' must be a list"),
    (_with(MULTIARITH, 1, lSolutions=["12"]), ": record 1 (iIndex 0): field 'lSolutions' must be a list holding"),
    (_with(MULTIARITH, 1, lSolutions=12.0), ": record 1 (iIndex 0): field 'lSolutions' must be a list holding"),
    (_with(MULTIARITH, 0, sQuestion=...), ": record 0 (iIndex 3): missing field 'sQuestion'"),
    (_with(MULTIARITH, 1, iIndex=3), ": record 1 (iIndex 3): id 'multiarith-3' is also the id of record 0"),
]


@pytest.mark.parametrize(("records", "expected"), MULTIARITH_ERRORS)
def test_multiarith_malformed_names_file_record_and_field(tmp_path, records, expected):
    path = write_json_list(tmp_path / "MultiArith.json", records)
    with pytest.raises(DataError) as err:
        convert_multiarith(path)
    assert str(err.value).startswith(f"{path}{expected}"), str(err.value)


def test_missing_file_is_named(tmp_path):
    for convert in (convert_gsm_hard, convert_svamp, convert_multiarith):
        with pytest.raises(DataError, match=f"{tmp_path / 'none.json'}: file not found"):
            convert(tmp_path / "none.json")


# ---------------------------------------------------------------------------------------------------------------------
# The real files in ../shared/data (skipped, naming the path, when absent)

REAL = {
    "gsm_hard": ("gsm_hard/gsmhardv2.jsonl", 1319),
    "svamp": ("svamp/SVAMP.json", 1000),
    "multiarith": ("multiarith/MultiArith.json", 600),
}


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_file_converts_with_normalised_answers(name):
    relative, count = REAL[name]
    path = shared_file(relative)  # pytest.skip(f"shared dataset not found at {path}") when absent
    examples = get_converter(name)(path)
    assert len(examples) == count > 0  # the record counts of ../shared/data/README.md
    assert len({e.id for e in examples}) == count
    for example in examples:
        assert example.steps == [] and example.question == example.question.strip() and example.question
        value = Decimal(example.answer)  # a plain decimal: no exponent, no comma
        assert "e" not in example.answer.lower() and not example.answer.endswith(".0")
        assert example.answer == (str(int(value)) if value == value.to_integral_value() else example.answer)
    whole = sum(Decimal(e.answer) == Decimal(e.answer).to_integral_value() for e in examples)
    if name == "gsm_hard":  # 303 non-integer and 146 negative targets, kept as stored (README)
        assert count - whole == 303 and sum(e.answer.startswith("-") for e in examples) == 146
        assert examples[0].id == "gsm_hard-gsmhardv2-0"
    else:  # SVAMP's and MultiArith's answers are whole numbers stored as floats
        assert whole == count
        first = {"svamp": ("svamp-chal-1", "51"), "multiarith": ("multiarith-0", "39")}[name]
        assert (examples[0].id, examples[0].answer) == first


# ---------------------------------------------------------------------------------------------------------------------
# Intervals and the benchmark list


def test_wilson_interval_hand_values():
    # p = k/n, centre = (p + z^2/2n) / (1 + z^2/n), half = z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n), z = 1.95996
    expected = {
        (0, 10): (0.0, 0.277533),
        (5, 10): (0.236593, 0.763407),
        (10, 10): (0.722467, 1.0),
        (1, 50): (0.003539, 0.104954),
    }
    for (k, n), (low, high) in expected.items():
        got = low_difficulty.wilson_interval(k, n)
        assert got == pytest.approx((low, high), abs=1e-6, rel=0), (k, n)
    with pytest.raises(ValueError):
        low_difficulty.wilson_interval(3, 2)


def test_bootstrap_interval_is_seeded_and_near_the_normal_interval_for_many_questions():
    scores = torch.tensor([0.0, 0.25, 0.5, 1.0, 1.0, 0.75, 0.125, 0.375], dtype=torch.float64)
    first = low_difficulty.bootstrap_interval(scores, seed=3, resamples=40)
    assert first == low_difficulty.bootstrap_interval(scores, seed=3, resamples=40)
    assert first != low_difficulty.bootstrap_interval(scores, seed=4, resamples=40)
    assert first[0] < float(scores.mean()) < first[1]
    assert low_difficulty.bootstrap_interval(torch.full((5,), 0.5), seed=0) == (0.5, 0.5)
    # 50 right of 100: the mean's standard error is 0.05, so the 95% interval is about 0.5 -/+ 1.96 * 0.05
    half = torch.tensor([1.0, 0.0] * 50, dtype=torch.float64)
    assert low_difficulty.bootstrap_interval(half, seed=0) == pytest.approx((0.402, 0.598), abs=0.015, rel=0)


def test_shipped_benchmark_list():
    benchmarks = low_difficulty.read_benchmarks(REPO / low_difficulty.BENCHMARKS)
    assert [(b.name, b.source, b.path) for b in benchmarks] == [
        ("GSM8K", "gsm8k_aug", "../shared/data/gsm8k_aug/test.txt"),  # GSM8k-Aug's test set, as the papers
        ("GSM-Hard", "gsm_hard", "../shared/data/gsm_hard/gsmhardv2.jsonl"),
        ("SVAMP", "svamp", "../shared/data/svamp/SVAMP.json"),
        ("MultiArith", "multiarith", "../shared/data/multiarith/MultiArith.json"),
    ]
    assert [b.key for b in benchmarks] == ["gsm8k", "gsm_hard", "svamp", "multiarith"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("benchmarks:\n  - {name: A, source: svamp, paht: x.json}\n", r"benchmarks\[0\]: unknown key 'paht'.*'path'"),
        ("benchmarks:\n  - {name: A, source: mathqa, path: x}\n", r"benchmarks\[0\] \(A\): key 'source': 'mathqa'"),
        ("benchmarks:\n  - {name: A, source: arithmetic, path: x}\n", r"is not a data format \(known: jsonl, gsm8k"),
        ("benchmarks:\n  - {name: A, path: x}\n", r"benchmarks\[0\]: key 'source' must be a non-empty string"),
        ("benchmarks:\n  - {name: A-b, source: svamp, path: x}\n  - {name: a b, source: svamp, path: y}\n", "repeats"),
        ("- {name: A, source: svamp, path: x}\n", "expected one key 'benchmarks'"),
    ],
)
def test_benchmark_list_errors_name_file_entry_and_key(tmp_path, text, expected):
    path = tmp_path / "list.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=expected) as err:
        low_difficulty.read_benchmarks(path)
    assert str(path) in str(err.value)


# ---------------------------------------------------------------------------------------------------------------------
# The script end to end on a 2-layer random GPT-2


@pytest.fixture
def benchmark_files(tmp_path) -> tuple[Path, Path]:
    """A benchmark list of four hand-written files (one holds 2 questions) and one missing file."""
    data = tmp_path / "data"
    data.mkdir()
    aug = data / "test.txt"
    aug.write_text("Sam has 3 cats and 2 dogs. How many pets?||<<3+2=5>> #### 5\n" * 2 + "Q 4?||<<2*2=4>> #### 4\n")
    write_jsonl_lines(data / "hard.jsonl", GSM_HARD)
    write_json_list(data / "svamp.json", SVAMP)
    write_json_list(data / "multiarith.json", [{**MULTIARITH[0], "iIndex": i} for i in range(4)])
    missing = data / "absent.json"
    listing = tmp_path / "benchmarks.yaml"
    entries = [
        ("GSM8K", "gsm8k_aug", aug),
        ("GSM-Hard", "gsm_hard", data / "hard.jsonl"),
        ("SVAMP", "svamp", data / "svamp.json"),
        ("Absent", "svamp", missing),
        ("MultiArith", "multiarith", data / "multiarith.json"),
    ]
    listing.write_text(
        "benchmarks:\n" + "".join(f"  - {{name: {n}, source: {s}, path: '{p}'}}\n" for n, s, p in entries),
        encoding="utf-8",
    )
    return listing, missing


def tiny_reasoner_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "tiny_reasoner.yaml"
    path.write_text(
        f"base: {TINY_COT}\nname: ld_tiny\nreasoning:\n  reasoner: {json.dumps(TINY_REASONER)}\n"
        f"sampling: {{max_new_tokens: 6}}\neval: {{batch_size: 2}}\noutput_dir: {tmp_path / 'runs'}\n",
        encoding="utf-8",
    )
    return path


def read_rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_script_with_config_writes_table_skips_missing_refuses_and_repeats(tmp_path, benchmark_files, capsys):
    listing, missing = benchmark_files
    out, evals = tmp_path / "results", tmp_path / "evals"
    argv = ["--config", str(tiny_reasoner_yaml(tmp_path)), "--limit", "3", "--benchmarks", str(listing)]
    argv += ["--results-dir", str(out), "--evals-dir", str(evals)]
    assert low_difficulty.main(argv) == 0
    printed = capsys.readouterr().out
    assert f"[4/5] Absent: skipped: {missing} not found" in printed
    assert "[5/5] MultiArith: accuracy" in printed and "CoT (random weights)" in printed
    for suffix in (".md", ".csv", ".png", ".settings.json"):
        assert (out / f"ld_tiny{suffix}").is_file(), suffix
    rows = read_rows(out / "ld_tiny.csv")
    assert [r["benchmark"] for r in rows] == ["GSM8K", "GSM-Hard", "SVAMP", "Absent", "MultiArith"]
    assert [r["questions"] for r in rows] == ["3", "3", "2", "", "3"]  # the first 3, or all 2 of SVAMP
    assert rows[3]["note"] == f"skipped: {missing} not found" and rows[3]["accuracy"] == ""
    for row in rows[:3] + rows[4:]:
        key = row["benchmark"].lower().replace("-", "_")
        records = [
            json.loads(line) for line in (evals / "ld_tiny" / key / "predictions.jsonl").read_text().splitlines()
        ]
        n, right = len(records), sum(r["correct"] for r in records)
        assert n == int(row["questions"]) and float(row["accuracy"]) == pytest.approx(right / n, abs=1e-12, rel=0)
        low, high = low_difficulty.wilson_interval(right, n)
        assert (float(row["ci95_low"]), float(row["ci95_high"])) == pytest.approx((low, high), abs=1e-12, rel=0)
        assert float(row["latent_tokens_mean"]) == 0.0  # cot: no thoughts
        assert float(row["language_tokens_mean"]) == pytest.approx(sum(r["language_tokens"] for r in records) / n)
    table = (out / "ld_tiny.md").read_text()
    assert "greedy pass@1" in table and "Wilson" in table and "How uncertain: with 2 questions" in table
    assert f"skipped: {missing} not found" in table and "Produced by: `python experiments/low_difficulty.py" in table
    settings = json.loads((out / "ld_tiny.settings.json").read_text())
    assert settings["limit"] == 3 and settings["accuracy"] == "greedy pass@1"
    assert [b["status"] for b in settings["benchmarks"]] == ["evaluated"] * 3 + ["skipped: not found", "evaluated"]

    assert low_difficulty.main(argv) == 2  # refused before anything is evaluated
    assert "already holds results; pass --overwrite" in capsys.readouterr().err
    assert low_difficulty.main([*argv, "--overwrite"]) == 0
    assert read_rows(out / "ld_tiny.csv") == rows  # the same seed gives the same numbers


def test_script_with_a_checkpoint_and_sampling_uses_the_bootstrap(tmp_path, benchmark_files, capsys):
    from latentlab.training import fit
    from tests.test_reasoning_task import tiny

    run = fit(load_config(TINY_COT, tiny(tmp_path, "cot")), "r1").run_dir
    listing, _ = benchmark_files
    out = tmp_path / "results"
    argv = ["--checkpoint", str(run), "--limit", "2", "--benchmarks", str(listing), "--results-dir", str(out)]
    argv += ["--evals-dir", str(tmp_path / "evals"), "--set", "sampling.num_samples=2 sampling.max_new_tokens=4"]
    assert low_difficulty.main(argv) == 0
    assert "CoT on 5 benchmarks" in capsys.readouterr().out
    rows = read_rows(out / "t_cot-r1.csv")  # the run's config name and the run's folder
    assert [r["questions"] for r in rows] == ["2", "2", "2", "", "2"]
    for row in rows[:3]:
        assert 0.0 <= float(row["ci95_low"]) <= float(row["accuracy"]) <= float(row["ci95_high"]) <= 1.0
    settings = json.loads((out / "t_cot-r1.settings.json").read_text())
    assert settings["accuracy"] == "sampled pass@1" and settings["interval"].startswith("bootstrap")
    assert "percentile bootstrap" in (out / "t_cot-r1.md").read_text()


def test_script_errors_are_one_line_without_a_traceback(tmp_path, capsys):
    assert low_difficulty.main(["--checkpoint", str(tmp_path)]) == 2
    assert "no config.yaml" in capsys.readouterr().err
    config = tiny_reasoner_yaml(tmp_path)
    assert low_difficulty.main(["--config", str(config), "--limit", "0"]) == 2
    assert "--limit: expected a number of questions >= 1" in capsys.readouterr().err
    assert low_difficulty.main(["--config", str(config), "--name", "a/b"]) == 2
    assert "--name 'a/b'" in capsys.readouterr().err
    assert math.isclose(low_difficulty.Z_95, 1.959963984540054)


def test_a_malformed_benchmark_file_fails_before_any_evaluation(tmp_path, capsys):
    good = write_json_list(tmp_path / "good.json", SVAMP)
    bad = write_json_list(tmp_path / "bad.json", _with(SVAMP, 1, Answer="2.5"))
    listing = tmp_path / "list.yaml"
    listing.write_text(
        f"benchmarks:\n  - {{name: A, source: svamp, path: '{good}'}}\n  - {{name: B, source: svamp, path: '{bad}'}}\n"
    )
    out, evals = tmp_path / "results", tmp_path / "evals"
    argv = ["--config", str(tiny_reasoner_yaml(tmp_path)), "--benchmarks", str(listing)]
    assert low_difficulty.main([*argv, "--results-dir", str(out), "--evals-dir", str(evals)]) == 2
    assert f"{bad}: record 1 (ID chal-7): field 'Answer' must be" in capsys.readouterr().err
    assert not out.exists() and not evals.exists()  # nothing was evaluated or written


def test_last_number_extraction_only_where_there_is_no_marker():
    from latentlab.configs.reasoning import ReasoningEvalConfig
    from latentlab.reasoning.evaluate import extracted, last_number
    from latentlab.reasoning.module import GeneratedAnswers

    assert [last_number(t) for t in ("so it is 42.", "1,000 apples, then 7", "x = -2.5", "none")] == [
        "42",
        "7",
        "-2.5",
        "",
    ]
    answers = GeneratedAnswers(
        texts=["a 3 then ### 5", "so the answer is 12."],
        predictions=["5", "so the answer is 12."],
        n_latent=[0, 0],
        n_language=[5, 6],
        n_reasoning_language=[3, 6],
    )
    assert extracted(answers, ReasoningEvalConfig()).predictions == ["5", "so the answer is 12."]
    lenient = extracted(answers, ReasoningEvalConfig(answer_extraction="last_number"))
    assert lenient.predictions == ["5", "12"]
