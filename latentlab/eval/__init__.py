"""Evaluation: torchmetrics metrics and result reports (Markdown, CSV, plots)."""
