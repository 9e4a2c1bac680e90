"""How much the maps depend on batch size and window size (see scale.md).

Maps one scene several times and compares each probability map with the first (tile 256,
batch 8): share of valid pixels whose mask agrees, max and mean |Δp|::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/consistency.py \\
        ../shared/data/jinsha/region_B_image.tif ../shared/data/jinsha/region_B_dsm.tif MODEL
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from slidemap.infer.bench import build_predictor, compare_maps
from slidemap.infer.predict import PredictOptions, predict_scene

VARIANTS = [  # (label, tile, overlap, batch size)
    ("tile 256, batch 8 (reference)", 256, 64, 8),
    ("tile 256, batch 1", 256, 64, 1),
    ("tile 256, batch 3", 256, 64, 3),
    ("tile 384, batch 8", 384, 96, 8),
    ("tile 512, batch 4", 512, 128, 4),
    ("tile 256, overlap 128", 256, 128, 8),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", type=Path)
    parser.add_argument("dem", type=Path)
    parser.add_argument("model", type=Path)
    args = parser.parse_args()
    print("| precision | variant | mask agreement | max abs Δp | mean abs Δp |")
    print("| --- | --- | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory(prefix="slidemap-consistency-") as tmp:
        for precision in ("fp32", "bf16"):
            predictor = build_predictor([args.model], PredictOptions(precision=precision))
            maps = []
            for label, tile, overlap, batch in VARIANTS:
                options = PredictOptions(tile, overlap, batch, precision)
                prob = Path(tmp) / f"{precision}-{len(maps)}_prob.tif"
                predict_scene(predictor, args.image, args.dem, prob,
                              prob.with_name(prob.name.replace("prob", "mask")), options)
                maps.append(prob)
                if len(maps) > 1:
                    diff = compare_maps(prob, maps[0], predictor.threshold)
                    print(f"| {precision} | {label} | {diff['mask_agreement']:.6f} | "
                          f"{diff['max_abs_diff']:.2e} | {diff['mean_abs_diff']:.2e} |",
                          flush=True)


if __name__ == "__main__":
    main()
