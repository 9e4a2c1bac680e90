"""``slidemap study``: a grid of runs trained and scored on one budget; rerunning continues an
interrupted study (``slidemap.train.study``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from slidemap.train.study import load_study, run_study


@dataclass(frozen=True)
class StudyResult:
    rows: list[dict]  # one scored run each, as in results.csv
    results: Path  # results.md


def study(config: Path, out_dir: Path, overrides: tuple[str, ...] = ()) -> StudyResult:
    """Train and score every run of the study YAML at ``config`` into ``out_dir``."""
    return StudyResult(run_study(load_study(config, overrides), out_dir), out_dir / "results.md")
