"""Pixels each crossval fold may train on, per scene, for a config: what the buffer leaves.

Nothing is trained. Run from the repository root, e.g. ``.venv/bin/python
benchmarks/protocol/training_ground.py benchmarks/protocol/shipped/unet_terrain.yaml``; run it
in a checkout of an earlier commit to see what that commit's folds trained on.
"""

from __future__ import annotations

import argparse

from slidemap.evaluation.folds import make_blocks
from slidemap.schema.load import load_config
from slidemap.train.crossval import _scene_arrays, common_labels, scene_grids, training_ground


def main(path: str) -> None:
    config = load_config(path)
    scenes = common_labels({"candidate": _scene_arrays(config)})["candidate"]
    settings = config.crossval
    rows, cols = settings.blocks
    blocks = make_blocks([s.valid for s in scenes], [s.name for s in scenes], rows, cols,
                         settings.folds)
    grids = scene_grids(config, scenes)
    buffer = config.train.tile if settings.buffer is None else settings.buffer
    print(f"buffer {buffer} working px; labelled px: "
          + ", ".join(f"{s.name} {int(s.valid.sum())}" for s in scenes))
    for fold in range(settings.folds):
        hidden = training_ground(scenes, blocks, fold, buffer, grids)
        counts = [int((s.valid & ~h).sum()) for s, h in zip(scenes, hidden, strict=True)]
        print(f"fold {fold}: " + ", ".join(f"{s.name} {n}" for s, n in zip(scenes, counts,
                                                                           strict=True))
              + f", in all {sum(counts)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="a crossval run config (YAML)")
    main(parser.parse_args().config)
