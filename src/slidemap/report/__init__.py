"""Plots and self-contained HTML reports of training runs, evaluations and predictions."""

from slidemap.report.html import build_report
from slidemap.report.plots import plot_training_curves, write_evaluation_plots

__all__ = ["build_report", "plot_training_curves", "write_evaluation_plots"]
