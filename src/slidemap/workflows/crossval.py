"""``slidemap crossval``: spatial cross-validation of a recipe, and with a baseline the paired
difference and the decision of benchmarks/protocol/RULE.md (``slidemap.train.crossval``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slidemap.train.config import load_config
from slidemap.train.crossval import run_crossval


@dataclass(frozen=True)
class CrossvalResult:
    recipes: dict[str, dict[str, Any]]  # per recipe: pooled figures, worst block, ...
    comparison: dict[str, Any] | None  # with a baseline: difference, interval, adopt
    summary: Path  # summary.md
    blocks: Path  # blocks.md


def crossval(config: Path, out_dir: Path, baseline: Path | None = None,
             seeds: tuple[int, ...] | None = None) -> CrossvalResult:
    """Cross-validate the run config at ``config`` (and ``baseline``'s, on the same blocks);
    ``seeds`` replace the config's ``crossval.seeds``."""
    summary = run_crossval(load_config(config), out_dir,
                           load_config(baseline) if baseline is not None else None, seeds)
    return CrossvalResult(summary["recipes"], summary.get("comparison"),
                          out_dir / "summary.md", out_dir / "blocks.md")
