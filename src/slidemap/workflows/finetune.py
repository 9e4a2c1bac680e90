"""``slidemap finetune``: a model file trained further on a config's data, scored on the
config's validation data before and after (``finetune.json``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from slidemap.io.modelfile import model_source
from slidemap.schema.config import load_config, with_seed
from slidemap.train.finetune import finetune as finetune_run
from slidemap.train.runfolder import check_resume_or_overwrite


@dataclass(frozen=True)
class FinetuneResult:
    init: Path
    model: Path
    freeze_encoder: bool
    before: dict[str, float]  # validation figures: f1, iou, precision, recall, auc, pixels
    after: dict[str, float]
    record: Path  # finetune.json


def finetune(model: Path, config: Path, out_dir: Path, freeze_encoder: bool = False,
             resume: bool = False, overwrite: bool = False,
             seed: int | None = None, overrides: tuple[str, ...] = ()) -> FinetuneResult:
    """Train ``model`` on the data of the run config at ``config``; ``freeze_encoder`` (or
    the config's own) trains only the decoder and head."""
    check_resume_or_overwrite(resume, overwrite)
    model = model_source(model)  # a shipped model's bare name, recorded as the file it is
    run_config = with_seed(load_config(config, overrides), seed)
    settings = run_config.train.changed(
        freeze_encoder=freeze_encoder or run_config.train.freeze_encoder)
    record = finetune_run(run_config.changed(init=model, train=settings), out_dir,
                          resume=resume, overwrite=overwrite)
    return FinetuneResult(model, Path(record["model"]), record["freeze_encoder"],
                          record["before"], record["after"], out_dir / "finetune.json")
