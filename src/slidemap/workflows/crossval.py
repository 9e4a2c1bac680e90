"""``slidemap crossval``: spatial cross-validation of a recipe, and with a baseline the paired
difference and the decision of benchmarks/protocol/RULE.md (``slidemap.train.crossval``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slidemap.schema.config import load_config
from slidemap.train.adapt import AdaptOptions
from slidemap.train.adaptval import measure_adaptation
from slidemap.train.crossval import run_crossval


@dataclass(frozen=True)
class CrossvalResult:
    recipes: dict[str, dict[str, Any]]  # per recipe: pooled figures, worst block, ...
    comparison: dict[str, Any] | None  # with a baseline: difference, interval, adopt
    summary: Path  # summary.md
    blocks: Path  # blocks.md
    # with ``adapt``: the fold models adapted to their held-out blocks ("candidate") against
    # the same models as trained ("baseline"), written to OUT/adapt/
    adapted: dict[str, Any] | None = None


def crossval(config: Path, out_dir: Path, baseline: Path | None = None,
             seeds: tuple[int, ...] | None = None,
             adapt: AdaptOptions | None = None,
             overrides: tuple[str, ...] = ()) -> CrossvalResult:
    """Cross-validate the run config at ``config`` (and ``baseline``'s, on the same blocks);
    ``seeds`` replace the config's ``crossval.seeds``; ``adapt`` also measures scene
    adaptation (``slidemap predict --adapt``) with the held-out blocks as unlabelled targets."""
    candidate = load_config(config, overrides)
    summary = run_crossval(candidate, out_dir,
                           load_config(baseline) if baseline is not None else None, seeds)
    adapted = None if adapt is None else measure_adaptation(candidate, out_dir, adapt, seeds)
    return CrossvalResult(summary["recipes"], summary.get("comparison"),
                          out_dir / "summary.md", out_dir / "blocks.md", adapted)
