"""The protocol's fold models scored with every DEM raised or lowered (README, *A DEM of another
datum*): what another vertical datum or DEM source does to a recipe on ground it never saw.

Issue #26 measured it for the shipped elevation U-Net on held-out ground (F1 0.79 → 0.67 with
the DEM 30 m higher); the two Jinsha regions share one DEM, so the protocol's blocks cannot show
it unless the DEM is shifted. This script writes each scene's DEM shifted by each offset (nodata
kept), reads both recipes' inputs from them on the same pixels as ``crossval`` does, predicts
every fold's blocks with that fold's models as trained (nothing is retrained) and pools the
confusion matrices as ``crossval`` does (out-of-fold thresholds). Offset 0 reproduces the run's
own table.

Usage (repository root, after benchmarks/protocol/run.sh):
  .venv/bin/python benchmarks/protocol/datum_shift.py
"""

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import rasterio
import yaml

from slidemap.data.dataset import load_scene_arrays
from slidemap.evaluation.folds import Block, scene_names
from slidemap.evaluation.scorer import score_regions
from slidemap.infer.ensemble import Predictor
from slidemap.infer.options import PredictOptions
from slidemap.io.modelfile import load_model
from slidemap.schema.config import RunConfig
from slidemap.schema.load import load_config
from slidemap.train.crossval import common_labels, summarise

RECIPES = {"candidate": "benchmarks/protocol/unet_terrain.yaml",
           "baseline": "benchmarks/protocol/unet_elevation.yaml"}


def shifted_dem(source: str, offset: float, folder: Path) -> str:
    """``source`` with ``offset`` metres added wherever it has data, as a GeoTIFF in
    ``folder`` (written once); offset 0 is the source itself."""
    if offset == 0:
        return source
    target = folder / f"{Path(source).stem}_{offset:+g}m.tif"
    if not target.exists():
        folder.mkdir(parents=True, exist_ok=True)
        with rasterio.open(source) as src:
            profile = src.profile
            values = src.read(1, masked=True).astype(np.float32)
        profile.update(dtype="float32", compress="deflate")
        nodata = profile.get("nodata")
        filled = (values + np.float32(offset)).filled(np.nan if nodata is None else nodata)
        with rasterio.open(target, "w", **profile) as dst:
            dst.write(filled.astype(np.float32), 1)
    return str(target)


def shifted_config(path: str, offset: float, folder: Path) -> RunConfig:
    """The recipe's config with every scene's DEM shifted by ``offset``."""
    raw = yaml.safe_load(Path(path).read_text())
    for scene in raw["data"]["train"]:
        scene["dem"] = shifted_dem(scene["dem"], offset, folder / "dems")
    written = folder / "configs" / f"{Path(path).stem}_{offset:+g}m.yaml"
    written.parent.mkdir(parents=True, exist_ok=True)
    written.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_config(written)


def score(run: Path, offset: float, seeds: list[int], folder: Path) -> dict:
    """``crossval``'s summary of ``run``'s fold models on DEMs shifted by ``offset``."""
    configs = {label: shifted_config(path, offset, folder) for label, path in RECIPES.items()}
    arrays = {}
    for label, config in configs.items():
        names = scene_names([s.image for s in config.train_scenes])
        arrays[label] = [replace(load_scene_arrays(s.image, s.mask, s.dem, config.inputs, s.aoi),
                                 name=name)
                         for s, name in zip(config.train_scenes, names, strict=True)]
    arrays = common_labels(arrays)
    record = json.loads((run / "candidate" / f"s{seeds[0]}" / "fold0" / "fold.json").read_text())
    blocks = [Block(**b) for b in record["blocks"]]
    folds = max(b.fold for b in blocks) + 1
    confusions: dict = {}
    for label, config in configs.items():
        confusions[label] = {}
        options = PredictOptions(batch_size=config.predict.batch_size,
                                 precision=config.train.precision)
        for seed in seeds:
            for fold in range(folds):
                bundle = load_model(run / label / f"s{seed}" / f"fold{fold}" / "model")
                predictor = Predictor([bundle], precision=config.train.precision)
                for index, scene in enumerate(arrays[label]):
                    mine = [b for b in blocks if b.fold == fold and b.scene == index]
                    if not mine:
                        continue
                    regions = [b.mask(scene.target.shape) for b in mine]
                    for block, confusion in zip(
                            mine, score_regions(predictor, scene, regions, options), strict=True):
                        confusions[label][(seed, block.name)] = confusion
    return summarise(confusions, blocks, tuple(seeds), folds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("out/protocol/terrain_vs_elevation"))
    parser.add_argument("--offsets", type=float, nargs="+", default=[0.0, 30.0, -60.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", type=Path, default=Path("out/protocol/datum_shift"))
    args = parser.parse_args()
    rows = []
    for offset in args.offsets:
        summary = score(args.run, offset, args.seeds, args.out)
        for label, name in (("candidate", "terrain descriptors"),
                            ("baseline", "absolute elevation")):
            recipe = summary["recipes"][label]
            rows.append(f"| {offset:+g} m | {name} | {recipe['pooled']['f1']:.4f} | "
                        f"{recipe['pooled']['iou']:.4f} | "
                        f"{recipe['pooled_at_model_threshold']['f1']:.4f} | "
                        f"{recipe['worst_block']['f1']:.4f} |")
        comparison = summary["comparison"]
        low, high = comparison["interval_95"]
        rows.append(f"| {offset:+g} m | difference (terrain − elevation) | "
                    f"{comparison['pooled_f1_difference']:+.4f} [{low:+.4f}, {high:+.4f}] | | | |")
        print("\n".join(rows[-3:]), flush=True)
    table = ["| DEM offset | recipe | pooled F1 (out-of-fold thresholds) | pooled IoU | "
             "pooled F1 at 0.5 | worst block F1 |", "| --- | --- | --- | --- | --- | --- |",
             *rows]
    (args.out / "summary.md").write_text("\n".join(table) + "\n")
    print(f"→ {args.out / 'summary.md'}")


if __name__ == "__main__":
    main()
