"""What a model file learnt from: the scene images of the run that trained it and of the runs it
started from (``init``), as its sidecar's ``provenance.config`` records them, and those whose
labels chose its kept epoch (``data.val`` with ``training.select: best``). Cross-validation asks
it, so that no block is scored by a model that saw it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from slidemap.data.names import DatasetName, absolute_name, is_local
from slidemap.io.modelfile import sidecar_record

INIT_DEPTH = 8  # how many starting models back (an init's own init) the record is followed


@dataclass
class Lineage:
    """Scene images a model trained on, those its epoch was selected on, and what its files
    leave unknown (in words)."""

    images: list[str] = field(default_factory=list)
    selected_on: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)

    def saw(self, image: DatasetName) -> bool:
        """Whether ``image`` is one of the images (relative names read from the current
        folder, links followed)."""
        return any(same_image(seen, image) for seen in self.images)


def lineage(model: Path) -> Lineage:
    """The scene images ``model`` and the models it started from trained on, self-training
    targets included (their imagery is read; ``selftrain`` records them with each round)."""
    found = Lineage()
    for _ in range(INIT_DEPTH):
        provenance = recorded_provenance(model)
        config = provenance.get("config") if provenance else None
        if not isinstance(config, dict) or "train" not in config:
            found.unknown.append(f"model file {model} records no training run")
            break
        targets = provenance.get("selftrain_targets") if provenance else None
        for item in [*_entries(config.get("train")), *_entries(targets)]:
            if isinstance(item.get("image"), str):
                found.images.append(item["image"])
            else:
                found.unknown.append(f"it trained on the patch set {item}")
        if _selects_best(config):  # the val scenes' labels chose the epoch the file keeps
            for item in _entries(config.get("val")):
                if isinstance(item.get("image"), str):
                    found.selected_on.append(item["image"])
                else:
                    found.unknown.append(f"its epoch was selected on the patch set {item}")
        start = config.get("init")
        if not isinstance(start, str):
            break
        model = Path(start)
    return found


def recorded_provenance(model: Path) -> dict | None:
    """A model sidecar's ``provenance`` (the run config that trained it under ``config``), or
    None where the sidecar or the record is missing or unreadable."""
    provenance = sidecar_record(model).get("provenance")
    return provenance if isinstance(provenance, dict) else None


def _selects_best(config: dict) -> bool:
    """Whether a recorded run kept its best epoch by validation (``select: best``, the
    default, also where the record predates the setting)."""
    training = config.get("training")
    return not isinstance(training, dict) or training.get("select", "best") == "best"


def same_image(recorded: str, other: DatasetName) -> bool:
    """Two local files: the same file; else the same GDAL name (``/vsizip/...``, a URL), a
    relative archive taken from the current folder: ``Path`` would fold a name's ``//``."""
    if is_local(recorded) and is_local(other):
        return _same_file(Path(recorded), Path(other))
    return absolute_name(recorded) == absolute_name(other)


def _same_file(recorded: Path, other: Path) -> bool:
    try:
        return recorded.resolve() == other.resolve() or os.path.samefile(recorded, other)
    except (OSError, RuntimeError):
        return False


def _entries(value: object) -> list[dict]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []
