"""Result tables: Markdown text, CSV round trip, PNG output, atomic writes and column errors."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from latentlab.errors import ConfigError
from latentlab.eval.report import PlotSpec, format_markdown_table, format_value, write_table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

ROWS = [
    {"method": "latent top-5", "exact_match": 0.3, "f1": 0.41234, "context_tokens": 45.4, "questions": 100},
    {"method": "BM25 | raw", "exact_match": 1 / 3, "f1": 0.5, "context_tokens": 195.0, "questions": 100},
]

EXPECTED_TABLE = (
    "| method | exact_match | f1 | context_tokens | questions |\n"
    "|---|---:|---:|---:|---:|\n"
    "| latent top-5 | 0.300 | 0.412 | 45 | 100 |\n"
    "| BM25 \\| raw | 0.333 | 0.500 | 195 | 100 |\n"
)


def test_format_value():
    assert format_value(0.41256, "f1") == "0.413"
    assert format_value(45.6, "context_tokens") == "46"
    assert format_value(12, "questions") == "12"
    assert format_value(None, "f1") == ""
    assert format_value(float("nan"), "f1") == "nan"
    assert format_value(True, "ok") == "True"


def test_format_markdown_table():
    assert format_markdown_table(ROWS) == EXPECTED_TABLE


def test_format_markdown_table_column_choice_and_missing_cells():
    rows = [{"method": "a", "f1": 0.5}, {"method": "b", "recall@5": 1.0}]
    assert format_markdown_table(rows, ["recall@5", "method"]) == (
        "| recall@5 | method |\n|---:|---|\n|  | a |\n| 1.000 | b |\n"
    )
    with pytest.raises(ConfigError, match="'f2'.*'f1'"):
        format_markdown_table(rows, ["method", "f2"])


def test_write_table_markdown_csv_png(tmp_path: Path):
    stem = tmp_path / "results" / "table1.tiny"
    written = write_table(
        ROWS,
        stem,
        "Table 1 (tiny): latent memory vs raw text",
        plot=PlotSpec(kind="bar", metrics=("exact_match", "f1"), label_column="method"),
        command="python experiments/reproduce.py table1 --scale tiny",
    )
    assert written.markdown == tmp_path / "results" / "table1.tiny.md"
    assert written.markdown.read_text() == (
        "# Table 1 (tiny): latent memory vs raw text\n\n"
        "Produced by: `python experiments/reproduce.py table1 --scale tiny`\n\n" + EXPECTED_TABLE
    )

    with written.csv.open(newline="") as handle:
        parsed = list(csv.DictReader(handle))
    assert [row["method"] for row in parsed] == ["latent top-5", "BM25 | raw"]
    for row, original in zip(parsed, ROWS):
        # Full precision in the CSV: the numbers read back are the numbers written.
        for key in ("exact_match", "f1", "context_tokens"):
            assert float(row[key]) == original[key]
        assert int(row["questions"]) == original["questions"]

    assert written.png is not None
    assert written.png.read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in stem.parent.iterdir()) == ["table1.tiny.csv", "table1.tiny.md", "table1.tiny.png"]


def test_write_table_scatter_and_no_plot(tmp_path: Path):
    spec = PlotSpec(kind="scatter", metrics=("f1",), label_column="method", x="context_tokens")
    written = write_table(ROWS, tmp_path / "scatter", "F1 vs tokens", columns=["method", "f1"], plot=spec)
    assert written.png is not None and written.png.read_bytes()[:8] == PNG_MAGIC
    assert written.markdown.read_text().startswith("# F1 vs tokens\n\n| method | f1 |\n")
    assert written.csv.read_text() == "method,f1\nlatent top-5,0.41234\nBM25 | raw,0.5\n"

    plain = write_table(ROWS, tmp_path / "plain", "No plot")
    assert plain.png is None and not (tmp_path / "plain.png").exists()


def test_write_table_replaces_existing_files(tmp_path: Path):
    write_table(ROWS, tmp_path / "t", "old")
    write_table(ROWS[:1], tmp_path / "t", "new")
    assert (tmp_path / "t.md").read_text().startswith("# new\n")
    assert len((tmp_path / "t.csv").read_text().splitlines()) == 2


def test_bad_plot_spec_writes_nothing(tmp_path: Path):
    with pytest.raises(ConfigError, match="needs plot.x"):
        write_table(ROWS, tmp_path / "t", "t", plot=PlotSpec(kind="scatter", metrics=("f1",), label_column="method"))
    with pytest.raises(ConfigError, match="'method' is not numeric"):
        write_table(ROWS, tmp_path / "t", "t", plot=PlotSpec(kind="bar", metrics=("method",), label_column="method"))
    assert list(tmp_path.iterdir()) == []
