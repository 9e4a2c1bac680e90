"""The RGB-only model: `predict` without a DEM picks it and says so; the shipped file loads and
maps a crop of real imagery (skips without ../shared/data)."""

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from factories import SHARED_DATA, patch_folder, tiny_bundle, write_raster
from rasterio.windows import Window

from slidemap import api
from slidemap.data.channels import InputSpec
from slidemap.io.modelfile import load_model, save_model
from slidemap.models import build_model
from slidemap.schema.config import parse_config
from slidemap.train.warmstart import parameter_groups
from slidemap.workflows import inputs


def tiny_rgb_model(path: Path) -> Path:
    """An untrained width-4 U-Net reading RGB only (no DEM, no slope)."""
    return save_model(tiny_bundle(InputSpec(image_bands=(1, 2, 3))), path)


def test_predict_without_dem_uses_the_rgb_model(tmp_path, tiny_scene, tiny_model, run_cli,
                                                monkeypatch) -> None:
    rgb = tiny_rgb_model(tmp_path / "rgb" / "rgb")
    monkeypatch.setattr(inputs, "RGB_MODEL", rgb)
    monkeypatch.setattr(inputs, "DEFAULT_MODEL", tiny_model)  # reads RGB + slope: needs the DEM

    code, err = run_cli("predict", tiny_scene["image"], "--out", tmp_path / "no-dem")
    assert code == 0, err
    assert f"no --dem: mapping with the RGB-only model {rgb.stem} (models/README.md)" in err
    assert len([line for line in err.splitlines() if "RGB-only" in line]) == 1
    assert (tmp_path / "no-dem" / "scene_prob.tif").exists()

    code, err = run_cli("predict", tiny_scene["image"], "--dem", tiny_scene["dem"],
                        "--out", tmp_path / "dem")
    assert code == 0, err
    assert "RGB-only" not in err  # with a DEM, the RGB + DEM default as before


def test_a_patch_folder_without_dem_names_the_folder_not_an_option(tmp_path, run_cli,
                                                                   monkeypatch) -> None:
    """A folder refuses --dem (its DEMs go in dem/), yet its RGB-only line said "no --dem"."""
    rgb = tiny_rgb_model(tmp_path / "rgb" / "rgb")
    monkeypatch.setattr(inputs, "RGB_MODEL", rgb)
    folder = patch_folder(tmp_path / "patches", count=1)
    code, err = run_cli("predict", folder, "--out", tmp_path / "out")
    assert code == 0, err
    assert f"no dem/ in {folder}: mapping with the RGB-only model {rgb.stem}" in err
    assert "--dem" not in err


def test_python_api_without_dem_picks_the_rgb_model(tmp_path, tiny_scene, monkeypatch) -> None:
    monkeypatch.setattr(inputs, "RGB_MODEL", tiny_rgb_model(tmp_path / "rgb" / "rgb"))
    monkeypatch.setattr(inputs, "DEFAULT_MODEL", tmp_path / "missing.safetensors")
    result = api.predict(tiny_scene["image"], tmp_path / "out")
    assert Path(result.prob).exists()
    with pytest.raises(Exception, match=r"missing\.safetensors"):  # a DEM asks for the default
        api.predict(tiny_scene["image"], tmp_path / "out2", dem=tiny_scene["dem"])
    scored = api.evaluate(tiny_scene["mask"], image=tiny_scene["image"], out_dir=tmp_path / "ev")
    assert scored.model == [str(inputs.RGB_MODEL)]  # evaluate chooses as predict does


def test_which_inputs_come_with_elevation(tmp_path) -> None:
    plain = tmp_path / "plain"
    (plain / "images").mkdir(parents=True)
    with_dem = tmp_path / "with-dem"
    for name in ("images", "dem"):
        (with_dem / name).mkdir(parents=True)
    scene = tmp_path / "scene.tif"
    assert not api.has_elevation(scene, None)
    assert api.has_elevation(scene, tmp_path / "dem.tif")
    assert not api.has_elevation(plain, None)
    assert api.has_elevation(with_dem, None)
    assert api.has_elevation(tmp_path, None)  # Bijie layout / L4S split: not plain RGB patches


def test_encoder_lr_gives_the_encoder_its_own_rate() -> None:
    model = build_model("unet", 3, width=4, depth=2)
    rest, encoder = parameter_groups(model, 1e-3, 0.1)
    assert encoder["lr"] == pytest.approx(1e-4) and rest["lr"] == 1e-3
    assert {id(p) for p in encoder["params"]} == {id(p) for p in model.encoder.parameters()}
    assert len(rest["params"]) + len(encoder["params"]) == len(list(model.parameters()))
    assert len(parameter_groups(model, 1e-3, 1.0)) == 1
    with pytest.raises(Exception, match="encoder_lr"):
        parse_config({"data": {"train": [{"image": "a.tif", "mask": "b.tif"}]},
                      "training": {"encoder_lr": 2.0}})


SHIPPED = api.RGB_MODEL


def test_the_shipped_rgb_model_is_a_small_rgb_only_file() -> None:
    sidecar = json.loads(SHIPPED.with_suffix(".json").read_text())
    bundle = load_model(SHIPPED)
    assert bundle.inputs.channels == ["band1", "band2", "band3"]
    assert sidecar["weights_dtype"] == "int4"
    assert SHIPPED.stat().st_size < 3 * 2**20
    trained_on = json.dumps(sidecar["provenance"]["config"]["train"])
    for site in ("nepal", "bijie", "sichuan", "region_A_image", "region_B_image"):
        assert site in trained_on



def log_table_row(key: str) -> str:
    """The row ``key`` of the experiment log's table that describes the shipped RGB model."""
    text = (api.PACKAGE_ROOT / "benchmarks" / "experiments.md").read_text()
    table = text.split("| | `slidemap-rgb-sites` |", 1)[1].split("\n\n", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith(f"| {key} |")]
    assert len(rows) == 1, f"no row {key!r} in the experiment log's RGB model table"
    return rows[0]


def test_the_experiment_log_describes_how_the_shipped_rgb_file_was_trained() -> None:
    """The log's table of the shipped file states the recipe its sidecar records: after the
    file was retrained with batches by site, the table still said bf16 and nothing of them."""
    training = json.loads(SHIPPED.with_suffix(".json").read_text())[
        "provenance"]["config"]["training"]
    budget = log_table_row("budget")
    for said in (f"{training['epochs']} epochs", f"{training['windows_per_epoch']} random windows",
                 f"{training['tile']} × {training['tile']}", f"batch {training['batch_size']}",
                 f"precision: {training['precision']}", f"seed {training['seed']}"):
        assert said in budget, said
    assert ("`training.domain_batches: true`" in log_table_row("batches")) == \
        training["domain_batches"]


def test_the_readmes_advise_on_a_new_site_as_the_card_does() -> None:
    """The card tells a user with a new site to label a few tiles and train (newsite), since
    fine-tuning from an RGB model did not beat training from scratch; the READMEs said to
    fine-tune the file instead."""
    card = json.loads(SHIPPED.with_suffix(".json").read_text())["card"]["new_ground"]
    readme = (api.PACKAGE_ROOT / "README.md").read_text()
    paragraph = readme.split("`models/slidemap-rgb-sites.safetensors` (+ `.json`)", 1)[1]
    row = [line for line in (api.PACKAGE_ROOT / "models" / "README.md").read_text().splitlines()
           if line.startswith("| `slidemap-rgb-sites`")]
    assert "slidemap newsite" in card and len(row) == 1
    for advice in (paragraph.split("\n\n", 1)[0], row[0]):
        assert "slidemap newsite" in advice and "starting point" not in advice

@pytest.mark.slow  # reads the real ../shared/data
@pytest.mark.skipif(not (SHARED_DATA / "jinsha").exists(), reason="../shared/data is not here")
def test_shipped_rgb_model_maps_a_crop_without_a_dem(tmp_path) -> None:
    source = SHARED_DATA / "jinsha" / "region_A_image.tif"
    window = Window(900, 900, 400, 400)
    with rasterio.open(source) as src:
        crop = src.read(window=window)
        transform = src.window_transform(window)
        crs = src.crs
    with rasterio.open(SHARED_DATA / "jinsha" / "region_A_mask.tif") as src:
        truth = src.read(1, window=window)
    image = write_raster(tmp_path / "crop.tif", crop, crs=crs, transform=transform, nodata=0)
    result = api.predict(image, tmp_path / "out")  # no DEM: the shipped RGB model
    with rasterio.open(result.mask) as out:
        assert (out.crs, out.transform, out.shape) == (crs, transform, (400, 400))
        mask = out.read(1)
    scored = (truth != 255) & (mask != 255)  # the crop's own nodata (image 0) stays unmapped
    assert scored.mean() > 0.9
    # Ground it was trained on; the floor is the map that marks every pixel as landslide (F1
    # 0.24 here), which a damaged or wrong file does not beat. The shipped file gives 0.28: its
    # batch norm was learnt one site at a time, and its stored statistics fit Jinsha poorly
    # (benchmarks/rgb_sites/ninth_comparison.md, "The shipped model on its own sites"); the
    # earlier recipe's file gave 0.49.
    hits = np.logical_and(mask == 1, truth == 1)[scored].sum()
    f1 = 2 * hits / max((mask[scored] == 1).sum() + (truth[scored] == 1).sum(), 1)
    share = (truth[scored] == 1).mean()
    assert f1 > 2 * share / (1 + share)
