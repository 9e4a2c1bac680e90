"""``slidemap selftrain``: train on the labelled source, then retrain with pseudo-labels of the
unlabelled target, round by round (``slidemap.train.selftrain``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from slidemap.schema.config import load_config
from slidemap.train.selftrain import selftrain as selftrain_run


@dataclass(frozen=True)
class SelftrainResult:
    rounds: list[dict]  # round 0 (source only), then one row per pseudo-label round
    table: Path  # rounds.md
    model: Path  # the last round's model

    @property
    def pseudo_label_rounds(self) -> int:
        return len(self.rounds) - 1


def selftrain(config: Path, out_dir: Path, overwrite: bool = False,
              overrides: tuple[str, ...] = ()) -> SelftrainResult:
    """Self-train as the ``selftrain:`` section of the run config at ``config`` says."""
    rows = selftrain_run(load_config(config, overrides), out_dir, overwrite)
    return SelftrainResult(rows, out_dir / "rounds.md", out_dir / "model.safetensors")
