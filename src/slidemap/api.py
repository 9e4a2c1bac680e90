"""The Python API: what the CLI does, callable from a notebook or a script."""

from __future__ import annotations

import json
from pathlib import Path

from rich.progress import Progress

from slidemap.errors import SlidemapError
from slidemap.infer.evaluate import evaluate_raster
from slidemap.infer.predict import PredictOptions, predict_scene
from slidemap.infer.vectorize import build_inventory, write_inventory
from slidemap.io.modelfile import ModelBundle, load_model

PACKAGE_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = PACKAGE_ROOT / "models" / "slidemap-jinsha-unet.safetensors"


def default_model_path() -> Path:
    if not DEFAULT_MODEL.exists():
        raise SlidemapError(f"the shipped model {DEFAULT_MODEL} is missing: pass --model PATH")
    return DEFAULT_MODEL


def output_paths(image: Path, out_dir: Path) -> dict[str, Path]:
    stem = image.stem
    return {"prob": out_dir / f"{stem}_prob.tif", "mask": out_dir / f"{stem}_mask.tif",
            "inventory": out_dir / f"{stem}_landslides.gpkg"}


def check_outputs(paths: list[Path], inputs: list[Path], overwrite: bool) -> None:
    """Refuse to overwrite inputs ever, and existing outputs unless ``overwrite``."""
    resolved_inputs = {p.resolve() for p in inputs}
    for path in paths:
        if path.resolve() in resolved_inputs:
            raise SlidemapError(f"output {path} would overwrite an input: choose another --out")
        if path.exists() and not overwrite:
            raise SlidemapError(f"output {path} exists: pass --overwrite or choose another --out")


def predict(image: Path, out_dir: Path, dem: Path | None = None, model: Path | None = None,
            options: PredictOptions | None = None, min_area_m2: float = 0.0,
            simplify_m: float = 0.0, overwrite: bool = False,
            progress: Progress | None = None) -> dict:
    """Map landslides in ``image``: probability, mask and inventory files in ``out_dir``."""
    bundle = load_model(model or default_model_path())
    paths = output_paths(image, out_dir)
    check_outputs(list(paths.values()), [image] + ([dem] if dem else []), overwrite)
    _make_dir(out_dir)
    counts = predict_scene(bundle, image, dem, paths["prob"], paths["mask"],
                           options or PredictOptions(), progress)
    inventory = build_inventory(paths["mask"], paths["prob"], min_area_m2, simplify_m)
    write_inventory(inventory, paths["inventory"])
    return {**{k: str(v) for k, v in paths.items()}, **counts, "landslides": len(inventory),
            "landslide_area_m2": float(inventory.attributes["area_m2"].sum())}


def evaluate(truth: Path, prediction: Path | None = None, image: Path | None = None,
             dem: Path | None = None, model: Path | None = None, out_dir: Path | None = None,
             threshold: float | None = None, options: PredictOptions | None = None,
             overwrite: bool = False, progress: Progress | None = None) -> dict:
    """Metrics of a prediction raster, or of a model run on ``image``, against ``truth``."""
    if (prediction is None) == (image is None):
        raise SlidemapError("evaluate needs either --prediction RASTER or --image IMAGE "
                            "(with --model) to score")
    report: dict = {"truth": str(truth)}
    if image is not None:
        bundle: ModelBundle = load_model(model or default_model_path())
        if out_dir is None:
            raise SlidemapError("evaluating a model needs --out DIR for its predicted rasters")
        paths = output_paths(image, out_dir)
        check_outputs([paths["prob"], paths["mask"]], [image, truth], overwrite)
        _make_dir(out_dir)
        predict_scene(bundle, image, dem, paths["prob"], paths["mask"],
                      options or PredictOptions(), progress)
        prediction = paths["prob"]
        threshold = bundle.threshold if threshold is None else threshold
        report["model"] = str(model or default_model_path())
    assert prediction is not None
    report["prediction"] = str(prediction)
    report["threshold"] = 0.5 if threshold is None else threshold
    report["metrics"] = evaluate_raster(prediction, truth, report["threshold"])
    if out_dir is not None:
        _make_dir(out_dir)
        (out_dir / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _make_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SlidemapError(f"cannot create output folder {path} ({exc.strerror}): "
                            "choose a writable --out") from exc
