"""Result tables: rows of run results -> Markdown (with title and command), CSV and an optional matplotlib plot.

Every file is written atomically through ``latentlab.io`` (temp file beside it, then ``os.replace``): no reader sees half.
"""

from __future__ import annotations

import csv
import io
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from latentlab.errors import ConfigError
from latentlab.io import write_bytes

__all__ = ["PlotSpec", "TableFiles", "format_markdown_table", "format_value", "write_table"]


@dataclass(frozen=True)
class PlotSpec:
    """What to plot from a result table.

    kind: "bar" draws one group of bars per row (one bar per metric in ``metrics``); "scatter" draws each row as
    one point per metric at (row[x], row[metric]), e.g. F1 against context tokens, annotated with its label.
    """

    kind: Literal["bar", "scatter"]
    metrics: tuple[str, ...]
    """Numeric columns on the y axis."""
    label_column: str
    """Column naming each row (bar group labels, scatter point annotations), e.g. "method"."""
    x: str | None = None
    """Numeric column on the x axis; required for "scatter", unused for "bar"."""
    ylabel: str | None = None
    """Y axis label; defaults to the metric names."""


@dataclass(frozen=True)
class TableFiles:
    """Paths written by ``write_table``."""

    markdown: Path
    csv: Path
    png: Path | None


def _is_token_count(column: str) -> bool:
    return column.endswith("tokens")


def format_value(value: Any, column: str) -> str:
    """One cell as shown in Markdown.

    Token-count columns (names ending in "tokens") are integers, other floats have 3 decimals, None is empty.
    """
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        if math.isnan(value):
            return "nan"
        return f"{value:.0f}" if _is_token_count(column) else f"{value:.3f}"
    return str(value)


def _resolve_columns(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None) -> list[str]:
    known: list[str] = []
    for row in rows:
        known += [key for key in row if key not in known]
    if columns is None:
        return known
    unknown = [c for c in columns if c not in known]
    if unknown:
        raise ConfigError(f"table columns {unknown} are in no result row; expected some of {known}")
    return list(columns)


def _is_numeric_column(rows: Sequence[Mapping[str, Any]], column: str) -> bool:
    values = [row.get(column) for row in rows if row.get(column) is not None]
    return bool(values) and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values)


def format_markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A GitHub Markdown table of ``rows`` (numeric columns right-aligned), ending with a newline.

    columns: which keys, in order; None takes every key in order of first appearance. A row lacking a key gets an
    empty cell.
    """
    columns = _resolve_columns(rows, columns)
    if not columns:
        return ""

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    header = "| " + " | ".join(cell(c) for c in columns) + " |"
    rule = "|" + "|".join("---:" if _is_numeric_column(rows, c) else "---" for c in columns) + "|"
    body = ["| " + " | ".join(cell(format_value(row.get(c), c)) for c in columns) + " |" for row in rows]
    return "\n".join([header, rule, *body]) + "\n"


def _csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    # Full precision here (repr of floats), so the CSV can be read back without loss; Markdown is for people.
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else row.get(c) for c in columns])
    return buffer.getvalue()


def _plot_png(rows: Sequence[Mapping[str, Any]], spec: PlotSpec, title: str) -> bytes:
    # The object API with an explicit Agg canvas: no pyplot global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    needed = [spec.label_column, *spec.metrics] + ([spec.x] if spec.x is not None else [])
    _resolve_columns(rows, needed)
    for column in [*spec.metrics] + ([spec.x] if spec.x is not None else []):
        if not _is_numeric_column(rows, column):
            raise ConfigError(f"plot column '{column}' is not numeric in every row; expected numbers to plot")
    if not spec.metrics:
        raise ConfigError("plot.metrics is empty; expected at least one numeric column to plot")

    labels = [str(row.get(spec.label_column, "")) for row in rows]
    fig = Figure(figsize=(max(6.0, 0.9 * len(rows) * max(1, len(spec.metrics)) + 2.0), 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if spec.kind == "bar":
        width = 0.8 / len(spec.metrics)
        for m_index, metric in enumerate(spec.metrics):
            offsets = [r + (m_index - (len(spec.metrics) - 1) / 2) * width for r in range(len(rows))]
            heights = [float("nan") if row.get(metric) is None else float(row[metric]) for row in rows]
            ax.bar(offsets, heights, width=width, label=metric)
        ax.set_xticks(range(len(rows)), labels, rotation=20, ha="right")
    elif spec.kind == "scatter":
        if spec.x is None:
            raise ConfigError(
                "plot.kind 'scatter' needs plot.x, the numeric column for the x axis (e.g. a tokens column)"
            )
        for metric in spec.metrics:
            points = [
                (float(row[spec.x]), float(row[metric]), label)
                for row, label in zip(rows, labels)
                if row.get(spec.x) is not None and row.get(metric) is not None
            ]
            ax.scatter([p[0] for p in points], [p[1] for p in points], label=metric)
            for px, py, label in points:
                ax.annotate(label, (px, py), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.margins(x=0.15, y=0.1)  # room for the point annotations
        ax.set_xlabel(spec.x)
    else:
        raise ConfigError(f"plot.kind '{spec.kind}' is unknown; expected 'bar' or 'scatter'")
    ax.set_ylabel(spec.ylabel or ", ".join(spec.metrics))
    ax.set_title(title)
    if len(spec.metrics) > 1:
        ax.legend()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path, columns: Sequence[str]) -> Path:
    """Write ``rows`` as one CSV file with these ``columns`` (full precision, "" for missing values), atomically."""
    path = Path(path)
    write_bytes(path, _csv_text(rows, columns).encode("utf-8"))
    return path


def write_table(
    rows: Sequence[Mapping[str, Any]],
    out_stem: Path,
    title: str,
    columns: Sequence[str] | None = None,
    plot: PlotSpec | None = None,
    command: str | None = None,
) -> TableFiles:
    """Write ``<out_stem>.md``, ``<out_stem>.csv`` and, with ``plot``, ``<out_stem>.png``.

    The Markdown starts with ``# title`` and, when given, the command that produced the numbers, so a number
    copied into the README can be traced back. ``out_stem`` keeps any dots in its name ("table1.tiny" ->
    "table1.tiny.md").
    """
    out_stem = Path(out_stem)
    columns = _resolve_columns(rows, columns)
    paths = TableFiles(
        markdown=out_stem.parent / f"{out_stem.name}.md",
        csv=out_stem.parent / f"{out_stem.name}.csv",
        png=out_stem.parent / f"{out_stem.name}.png" if plot is not None else None,
    )
    # Render everything before writing anything, so a bad plot spec leaves no half-updated set of files.
    png_bytes = _plot_png(rows, plot, title) if plot is not None else None
    header = f"# {title}\n\n"
    if command:
        header += f"Produced by: `{command}`\n\n"
    markdown = header + format_markdown_table(rows, columns)
    write_bytes(paths.markdown, markdown.encode("utf-8"))
    write_csv(rows, paths.csv, columns)
    if png_bytes is not None and paths.png is not None:
        write_bytes(paths.png, png_bytes)
    return paths
