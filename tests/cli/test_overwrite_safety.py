"""No input is ever replaced, outputs that belong together appear together, two runs into one
folder cannot both win, and what a killed run leaves is swept by the next."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyogrio.raw
import pytest
import shapely
from factories import (
    ORIGIN,
    TINY_TRAINING,
    UTM47,
    patch_folder,
    run_config,
    tiny_bundle,
    write_config,
    write_raster,
)

from slidemap import api
from slidemap.data.channels import InputSpec
from slidemap.errors import SlidemapError
from slidemap.infer.predict import PredictOptions
from slidemap.io.atomic import (
    HOST,
    atomic_path,
    final_path,
    make_output_dir,
    staged,
    sweep_stale,
)
from slidemap.io.modelfile import load_model, model_paths, save_model
from slidemap.io.styles import MASK_QML
from slidemap.report.html import SOURCES
from slidemap.workflows import predict as predict_workflow

FAST = PredictOptions(precision="fp32")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_error(code: int, err: str, *names: object, usage: bool = False) -> str:
    """One error line naming ``names``; exit 2 for a usage error, else 1 (a runtime error)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == (2 if usage else 1) and len(lines) == 1 and lines[0].startswith("error:"), err
    for name in names:
        assert str(name) in lines[0], lines[0]
    return lines[0]


def model_into(folder: Path, name: str, tiny_model: Path) -> Path:
    """The tiny model saved again as ``folder/name.safetensors`` + ``name.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    return save_model(load_model(tiny_model), folder / name)


# -- every command checks its outputs against every file it reads ------------------------------

def test_bench_json_never_replaces_an_input_and_needs_overwrite(
        tmp_path: Path, tiny_scene: dict[str, Path], tiny_model: Path, run_cli) -> None:
    dem = tiny_scene["dem"]
    before = digest(dem)
    for extra in ((), ("--overwrite",)):
        code, err = run_cli("bench", tiny_scene["image"], "--dem", dem, "--model", tiny_model,
                            "--json", dem, "--sample", "1", *extra)
        one_error(code, err, dem, "input")
    assert digest(dem) == before
    existing = tmp_path / "figures.json"
    existing.write_text("{}")
    code, err = run_cli("bench", tiny_scene["image"], "--dem", dem, "--model", tiny_model,
                        "--json", existing, "--sample", "1")
    one_error(code, err, existing, "--overwrite")
    assert existing.read_text() == "{}"


def test_report_out_never_replaces_an_input_and_needs_overwrite(
        tmp_path: Path, tiny_scene: dict[str, Path], run_cli) -> None:
    folder = tmp_path / "scored"
    prob = write_raster(tmp_path / "prob.tif", np.full((96, 96), 0.6, dtype=np.float32))
    assert run_cli("evaluate", tiny_scene["mask"], "--prediction", prob, "--out", folder)[0] == 0
    metrics = folder / "metrics.json"
    before = digest(metrics)
    for extra in ((), ("--overwrite",)):
        one_error(*run_cli("report", folder, "--out", metrics, *extra), metrics, ".html",
                  usage=True)
    assert digest(metrics) == before
    other = tmp_path / "elsewhere.html"
    other.write_text("mine")
    one_error(*run_cli("report", folder, "--out", other), other, "--overwrite")
    assert other.read_text() == "mine"
    assert run_cli("report", folder, "--out", other, "--overwrite")[0] == 0
    assert "Evaluation against" in other.read_text()


def test_evaluate_never_replaces_its_model_inside_out(
        tmp_path: Path, tiny_scene: dict[str, Path], tiny_model: Path, run_cli) -> None:
    out = tmp_path / "out"
    model = model_into(out, "metrics", tiny_model)  # its sidecar is out/metrics.json
    sidecar = model_paths(model)[1]
    before = digest(sidecar)
    for extra in ((), ("--overwrite",)):
        code, err = run_cli("evaluate", tiny_scene["mask"], "--image", tiny_scene["image"],
                            "--dem", tiny_scene["dem"], "--model", model, "--out", out, *extra)
        one_error(code, err, sidecar, "input")
    assert digest(sidecar) == before and load_model(model).width == 4


def test_explain_never_replaces_its_model_inside_out(
        tmp_path: Path, tiny_scene: dict[str, Path], tiny_model: Path, run_cli) -> None:
    out = tmp_path / "out"
    model = model_into(out, "explain", tiny_model)  # its sidecar is out/explain.json
    sidecar = model_paths(model)[1]
    before = digest(sidecar)
    code, err = run_cli("explain", tiny_scene["image"], "--dem", tiny_scene["dem"], "--model",
                        model, "--out", out, "--box", "0,0,40,40", "--overwrite")
    one_error(code, err, sidecar, "input")
    assert digest(sidecar) == before


def config_file(path: Path, scene: dict[str, Path], init: Path | None = None) -> Path:
    raw = run_config([scene], [scene], inputs={"image_bands": [1, 2, 3], "slope": True},
                     training={**TINY_TRAINING, "epochs": 2, "windows_per_epoch": 2},
                     predict={"tile": 64, "overlap": 16})
    if init is not None:
        raw["init"] = str(init)
    return write_config(path, raw)


def test_finetune_never_replaces_its_starting_model(
        tmp_path: Path, tiny_scene: dict[str, Path], tiny_model: Path, run_cli) -> None:
    run = tmp_path / "run"
    start = model_into(run, "model", tiny_model)
    before = [digest(p) for p in model_paths(start)]
    config = config_file(tmp_path / "site.yaml", tiny_scene)
    code, err = run_cli("finetune", start, config, "--out", run, "--overwrite")
    one_error(code, err, start, "input")
    assert [digest(p) for p in model_paths(start)] == before


def test_train_never_replaces_its_config(tmp_path: Path, tiny_scene: dict[str, Path],
                                         run_cli) -> None:
    run = tmp_path / "run"
    config = config_file(run / "summary.json", tiny_scene)  # JSON is YAML
    before = digest(config)
    code, err = run_cli("train", config, "--out", run, "--overwrite")
    one_error(code, err, config, "input")
    assert digest(config) == before


def test_train_never_writes_into_a_folder_its_patches_are_read_from(
        tmp_path: Path, run_cli) -> None:
    """train --out SET/images wrote curves.png among the images, over a patch of that name
    even without --overwrite; the next run read it as a patch and refused the set ('image
    curves.png has no mask')."""
    root = patch_folder(tmp_path / "set", count=2)
    for sub in ("images", "masks"):
        os.replace(root / sub / "p0.png", root / sub / "curves.png")
    before = {p: digest(p) for p in root.rglob("*.png")}
    config = write_config(tmp_path / "run.yaml", run_config(
        [{"patches": str(root)}], inputs={"image_bands": [1, 2, 3]}, training=TINY_TRAINING))
    for sub, extra in (("images", ()), ("masks", ("--overwrite",)), ("images/", ())):
        code, err = run_cli("train", config, "--out", f"{root}/{sub}", *extra)
        one_error(code, err, f"{root}/{sub}".rstrip("/"), "patches of")
    assert {p: digest(p) for p in root.rglob("*") if p.is_file()} == before


def test_a_refused_run_leaves_no_folder_it_created(
        tmp_path: Path, tiny_scene: dict[str, Path], tiny_model: Path, run_cli) -> None:
    """--out new/a/run refused on a bad input removed run but left new/ and new/a/ behind."""
    config = config_file(tmp_path / "site.yaml", {**tiny_scene, "mask": tiny_scene["image"]})
    runs = (("predict", tiny_scene["image"], "--dem", tmp_path / "none.tif", "--model",
             tiny_model, "--out"),
            ("train", config, "--out"))
    for args in runs:
        code, err = run_cli(*args, tmp_path / "new" / "a" / "run")
        assert code == 1, err
        assert not (tmp_path / "new").exists(), args[0]


def test_predict_never_writes_into_a_folder_its_patches_are_read_from(
        tmp_path: Path, run_cli) -> None:
    """predict SET --out SET/images wrote NAME_prob.tif and NAME_mask.tif among the images:
    the next run read them as patches and refused the set ('image p0_mask.tif has no mask')."""
    root = patch_folder(tmp_path / "set", count=2)
    model = save_model(tiny_bundle(InputSpec(image_bands=(1, 2, 3))), tmp_path / "rgb")
    for sub in ("images", "masks", "images/"):
        code, err = run_cli("predict", root, "--model", model, "--out", f"{root}/{sub}")
        assert code == 1 and "is a folder the patches of" in err, err
        assert sorted(p.name for p in (root / sub).iterdir()) == ["p0.png", "p1.png"]
    code, err = run_cli("predict", root, "--model", model, "--out", root)
    assert code == 0, err


def test_predict_into_a_patch_set_folder_replaces_its_own_outputs(
        tmp_path: Path, run_cli) -> None:
    """Every file under a patch set's folder counted as an input: predict SET --out SET, then
    again with --overwrite, was refused ('output SET/p0_prob.tif would overwrite an input')."""
    root = patch_folder(tmp_path / "set", count=2)
    model = save_model(tiny_bundle(InputSpec(image_bands=(1, 2, 3))), tmp_path / "rgb")
    code, err = run_cli("predict", root, "--model", model, "--out", root)
    assert code == 0, err
    code, err = run_cli("predict", root, "--model", model, "--out", root, "--overwrite")
    assert code == 0, err
    assert sorted(p.name for p in (root / "images").iterdir()) == ["p0.png", "p1.png"]


def test_a_smaller_patch_set_retires_the_maps_of_patches_it_lacks(tmp_path: Path) -> None:
    """predict SET --out DIR --overwrite, DIR used before for a larger set, left that set's
    p2/p3 maps beside the new ones and a metrics.json that did not count them. Only the files
    the earlier run's patches.json lists go: the user's own TIFF of such a name stays."""
    model = save_model(tiny_bundle(InputSpec(image_bands=(1, 2, 3))), tmp_path / "rgb")
    out = tmp_path / "out"
    options = PredictOptions(tile=16, overlap=0, precision="fp32")
    api.predict_patches(patch_folder(tmp_path / "big", count=4), out, model, options)
    (out / "mine_prob.tif").write_bytes(b"the user's")
    small = patch_folder(tmp_path / "small", count=2)
    with pytest.raises(SlidemapError, match="exists: pass --overwrite"):
        api.predict_patches(small, out, model, options)
    api.predict_patches(small, out, model, options, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [
        "metrics.json", "mine_prob.tif", "p0_mask.tif", "p0_prob.tif", "p1_mask.tif",
        "p1_prob.tif", "patches.json"]
    unlabelled = patch_folder(tmp_path / "one", count=1, masks=False)
    api.predict_patches(unlabelled, out, model, options, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [
        "mine_prob.tif", "p0_mask.tif", "p0_prob.tif", "patches.json"]


def test_a_hard_link_to_an_input_counts_as_the_input(
        tmp_path: Path, tiny_scene: dict[str, Path], tiny_model: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    os.link(tiny_scene["dem"], out / "scene_prob.tif")
    with pytest.raises(SlidemapError, match="would overwrite an input"):
        api.predict(tiny_scene["image"], out, tiny_scene["dem"], tiny_model, FAST,
                    overwrite=True)


# -- sets published together, exclusively ------------------------------------------------------

def test_a_set_is_published_whole_or_not_at_all(tmp_path: Path) -> None:
    targets = {"a": tmp_path / "a.tif", "b": tmp_path / "b.tif"}
    targets["b"].write_text("another run's")
    with pytest.raises(SlidemapError, match="exists"), staged(targets, overwrite=False) as tmp:
        for path in tmp.values():
            path.write_text("mine")
    assert not targets["a"].exists() and targets["b"].read_text() == "another run's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.tif"]


def test_ctrl_c_while_a_set_moves_into_place_comes_after_the_whole_set(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ctrl_c: None) -> None:
    """With --overwrite the files of a set replace theirs one by one: Ctrl-C or SIGTERM between
    two moves left the new probability beside the earlier run's mask and Item."""
    targets = {"a": tmp_path / "a.tif", "b": tmp_path / "b.tif"}
    for path in targets.values():
        path.write_text("earlier run's")
    replace = os.replace

    def interrupted(src: Path, dst: Path) -> None:
        replace(src, dst)
        os.kill(os.getpid(), signal.SIGINT)  # arrives between this move and the next

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt), staged(targets, overwrite=True) as tmp:
        for path in tmp.values():
            path.write_text("mine")
    assert [path.read_text() for path in targets.values()] == ["mine", "mine"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif", "b.tif"]


def test_an_output_that_is_a_folder_is_refused_before_any_file_moves(
        tmp_path: Path, tiny_scene: dict[str, Path], tiny_model: Path) -> None:
    """A folder under an output's name failed only when the set was moved into place, after the
    probability and mask had replaced theirs: half a set, and advice about disk space."""
    out = tmp_path / "out"
    (out / "scene_landslides.gpkg").mkdir(parents=True)
    with pytest.raises(SlidemapError, match=r"scene_landslides\.gpkg is a folder"):
        api.predict(tiny_scene["image"], out, tiny_scene["dem"], tiny_model, FAST,
                    overwrite=True)
    assert [p.name for p in out.iterdir()] == ["scene_landslides.gpkg"]
    targets = {"a": tmp_path / "a.tif", "b": tmp_path / "b"}
    targets["b"].mkdir()
    with pytest.raises(SlidemapError, match="is a folder"), staged(targets) as tmp:
        tmp["a"].write_text("mine")
        tmp["b"].write_text("mine")
    assert not targets["a"].exists()


def test_two_predicts_into_one_folder_cannot_both_succeed(
        tmp_path: Path, tiny_scene: dict[str, Path], tiny_model: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The second run checks its outputs while the first is still writing; the first then
    publishes; the second must fail rather than replace the first's files."""
    out = tmp_path / "out"
    original = predict_workflow.predict_scene
    calls = []

    def racing(*args: object, **kwargs: object) -> dict:
        if not calls:
            calls.append("inner")
            api.predict(tiny_scene["image"], out, tiny_scene["dem"], tiny_model, FAST)
        return original(*args, **kwargs)

    monkeypatch.setattr(predict_workflow, "predict_scene", racing)
    with pytest.raises(SlidemapError, match="exists"):
        api.predict(tiny_scene["image"], out, tiny_scene["dem"], tiny_model, FAST)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(p.name for p in api.output_paths(tiny_scene["image"], out).values())


def test_an_overwrite_in_another_format_leaves_no_inventory_of_the_earlier_run(
        tmp_path: Path, tiny_scene: dict[str, Path], tiny_model: Path) -> None:
    """The earlier run's GeoPackage would sit beside the new rasters (and the report reads the
    GeoPackage first): the new set replaces it, and without --overwrite it counts as existing
    (the earlier run's Item lists it)."""
    out = tmp_path / "out"
    first = api.predict(tiny_scene["image"], out, tiny_scene["dem"], tiny_model, FAST)
    for key in ("prob", "mask", "mask_aux", "prob_style", "mask_style", "style"):
        first.files[key].unlink()
    geojson = {k: p for k, p in api.output_paths(tiny_scene["image"], out, ("geojson",)).items()
               if k != "stac"}
    assert predict_workflow.replaced_paths(tiny_scene["image"], out, geojson.values()) == [
        first.inventory, first.stac]
    with pytest.raises(SlidemapError, match=r"item\.json exists"):
        api.predict(tiny_scene["image"], out, tiny_scene["dem"], tiny_model, FAST,
                    formats=("geojson",))
    second = api.predict(tiny_scene["image"], out, tiny_scene["dem"], tiny_model, FAST,
                         formats=("geojson",), overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in second.files.values())


def test_a_rasters_style_is_an_output_refused_and_replaced_as_the_others(
        tmp_path: Path, tiny_scene: dict[str, Path], tiny_model: Path) -> None:
    """``<stem>_mask.qml`` is QGIS's default style of the mask: one already there (an earlier
    run's, or the user's own) is kept unless --overwrite, and replaced with the set."""
    out = tmp_path / "out"
    first = api.predict(tiny_scene["image"], out, tiny_scene["dem"], tiny_model, FAST)
    style = first.files["mask_style"]
    for path in first.files.values():
        if path != style:
            path.unlink()
    style.write_text("<qgis/>\n")
    with pytest.raises(SlidemapError, match=r"scene_mask\.qml exists"):
        api.predict(tiny_scene["image"], out, tiny_scene["dem"], tiny_model, FAST)
    assert style.read_text() == "<qgis/>\n" and sorted(out.iterdir()) == [style]
    second = api.predict(tiny_scene["image"], out, tiny_scene["dem"], tiny_model, FAST,
                         overwrite=True)
    assert style.read_text() == MASK_QML
    assert sorted(out.iterdir()) == sorted(second.files.values())


def test_an_overwrite_without_report_leaves_no_report_of_the_earlier_run(
        tmp_path: Path, tiny_scene: dict[str, Path], tiny_model: Path) -> None:
    """report.html shows the earlier run's map and figures: it goes with the outputs it
    described; a run into a folder whose outputs it does not replace keeps it."""
    out = tmp_path / "out"
    api.predict(tiny_scene["image"], out, tiny_scene["dem"], tiny_model, FAST,
                html_report=True)
    other = tiny_scene["image"].with_name("other.tif")
    other.write_bytes(tiny_scene["image"].read_bytes())
    api.predict(other, out, tiny_scene["dem"], tiny_model, FAST)
    assert (out / "report.html").exists()
    api.predict(tiny_scene["image"], out, tiny_scene["dem"], tiny_model, FAST, overwrite=True)
    assert not (out / "report.html").exists()


def test_scoring_again_beside_a_prediction_keeps_its_report(
        tmp_path: Path, tiny_scene: dict[str, Path], tiny_model: Path) -> None:
    """An evaluation scored again into a prediction's folder replaces metrics.json and its
    plots, which the prediction's report was not made from: the report stays. A model scored
    again there replaces the map itself, and the report of the old map goes."""
    out = tmp_path / "out"
    mapped = api.predict(tiny_scene["image"], out, tiny_scene["dem"], tiny_model, FAST,
                         html_report=True)
    page = (out / "report.html").read_bytes()
    for _ in range(2):
        api.evaluate(tiny_scene["mask"], prediction=mapped.files["prob"], out_dir=out,
                     overwrite=True)
        assert (out / "report.html").read_bytes() == page
    api.evaluate(tiny_scene["mask"], image=tiny_scene["image"], dem=tiny_scene["dem"],
                 model=tiny_model, options=FAST, out_dir=out, overwrite=True)
    assert not (out / "report.html").exists()


def test_a_report_that_lists_no_files_goes_when_any_output_is_replaced(
        tmp_path: Path, tiny_scene: dict[str, Path], tiny_model: Path) -> None:
    """A page of an earlier version does not say what it was made from: an evaluation that
    replaces files in its folder removes it rather than leave it beside figures it may show."""
    out = tmp_path / "out"
    mapped = api.predict(tiny_scene["image"], out, tiny_scene["dem"], tiny_model, FAST,
                         html_report=True)
    page = out / "report.html"
    page.write_bytes(SOURCES.sub(b"", page.read_bytes()))
    api.evaluate(tiny_scene["mask"], prediction=mapped.files["prob"], out_dir=out)
    assert page.exists()
    api.evaluate(tiny_scene["mask"], prediction=mapped.files["prob"], out_dir=out,
                 overwrite=True)
    assert not page.exists()


def test_an_overwrite_stopped_before_its_report_leaves_no_report_of_the_earlier_run(
        tmp_path: Path, tiny_scene: dict[str, Path], tiny_model: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """predict --report builds its page after the new rasters are in place: a run stopped
    there (Ctrl-C, SIGTERM) left the earlier run's page, its map and model, beside them."""
    out = tmp_path / "out"
    api.predict(tiny_scene["image"], out, tiny_scene["dem"], tiny_model, FAST,
                html_report=True)

    def stopped(*args: object, **kwargs: object) -> Path:
        raise KeyboardInterrupt

    monkeypatch.setattr(predict_workflow, "build_report", stopped)
    with pytest.raises(KeyboardInterrupt):
        api.predict(tiny_scene["image"], out, tiny_scene["dem"], tiny_model,
                    PredictOptions(precision="fp32", threshold=0.3), overwrite=True,
                    html_report=True)
    assert not (out / "report.html").exists()


def test_an_overwrite_keeps_a_report_html_that_slidemap_did_not_write(
        tmp_path: Path, tiny_scene: dict[str, Path], tiny_model: Path) -> None:
    """The user's own page named report.html in --out describes no run: replacing the scene's
    outputs leaves it as it was."""
    out = tmp_path / "out"
    api.predict(tiny_scene["image"], out, tiny_scene["dem"], tiny_model, FAST)
    notes = out / "report.html"
    notes.write_text("<html><body>field survey notes</body></html>\n")
    api.predict(tiny_scene["image"], out, tiny_scene["dem"], tiny_model, FAST, overwrite=True)
    assert notes.read_text() == "<html><body>field survey notes</body></html>\n"


def test_an_evaluate_overwrite_leaves_no_inventory_or_item_of_the_rasters_it_replaced(
        tmp_path: Path, tiny_scene: dict[str, Path], tiny_model: Path) -> None:
    """Its rasters are another run's (float32, its own threshold): the prediction's inventory,
    style and STAC Item (checksums, data type) beside them would describe rasters now gone.
    The rasters' QGIS styles are written again with them (they were retired, and QGIS drew the
    mask's background white over the imagery)."""
    out = tmp_path / "out"
    api.predict(tiny_scene["image"], out, tiny_scene["dem"], tiny_model, FAST)
    api.evaluate(tiny_scene["mask"], image=tiny_scene["image"], dem=tiny_scene["dem"],
                 model=tiny_model, out_dir=out, options=FAST, overwrite=True)
    rasters = {k: p for k, p in api.output_paths(tiny_scene["image"], out).items()
               if k in ("prob", "mask", "mask_aux", "prob_style", "mask_style")}
    assert all(p.exists() for p in rasters.values())
    assert rasters["mask_style"].read_text() == MASK_QML
    retired = predict_workflow.replaced_paths(tiny_scene["image"], out, rasters.values())
    assert [p.name for p in retired if p.exists()] == []


def test_a_file_named_like_an_inventory_that_no_run_wrote_is_left_alone(
        tmp_path: Path, tiny_scene: dict[str, Path], tiny_model: Path) -> None:
    """A truth inventory beside the scene, named as the other format's inventory would be, is
    the user's, not an earlier run's: predicting into its folder needs no --overwrite for it,
    and with --overwrite (an earlier run's outputs there) does not remove it."""
    folder = tmp_path / "site"
    folder.mkdir()
    truth = folder / "scene_landslides.geojson"
    truth.write_text('{"type": "FeatureCollection", "features": []}\n')
    api.predict(tiny_scene["image"], folder, tiny_scene["dem"], tiny_model, FAST)
    api.predict(tiny_scene["image"], folder, tiny_scene["dem"], tiny_model, FAST,
                overwrite=True)
    assert truth.read_text() == '{"type": "FeatureCollection", "features": []}\n'


def test_evaluate_reads_a_truth_named_like_an_inventory_beside_its_outputs(
        tmp_path: Path, tiny_scene: dict[str, Path], tiny_model: Path) -> None:
    """evaluate --image writes rasters only: a truth in its --out that bears the inventory's
    name is its input there, not an output it would replace."""
    folder = tmp_path / "site"
    folder.mkdir()
    truth = folder / "scene_landslides.gpkg"
    slide = shapely.box(ORIGIN[0] + 20, ORIGIN[1] - 35, ORIGIN[0] + 40, ORIGIN[1] - 15)
    pyogrio.raw.write(truth, np.array([shapely.to_wkb(slide)], dtype=object), [], [],
                      driver="GPKG", geometry_type="Polygon", crs=UTM47)
    before = digest(truth)
    api.evaluate(truth, image=tiny_scene["image"], dem=tiny_scene["dem"], model=tiny_model,
                 out_dir=folder, options=FAST)
    assert digest(truth) == before


def test_a_failed_train_overwrite_keeps_the_earlier_set(
        tmp_path: Path, tiny_scene: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from slidemap.schema.config import load_config
    from slidemap.train import loop

    config = load_config(config_file(tmp_path / "run.yaml", tiny_scene))
    run = tmp_path / "run"
    loop.train(config, run)
    published = ("model.safetensors", "model.json", "summary.json")
    before = {name: digest(run / name) for name in published}

    original, calls = loop._train_epoch, []

    def diverging(*args: object, **kwargs: object) -> float:
        calls.append(1)
        return original(*args, **kwargs) if len(calls) == 1 else float("nan")

    monkeypatch.setattr(loop, "_train_epoch", diverging)
    with pytest.raises(SlidemapError, match="diverged in epoch 2"):
        loop.train(config, run, overwrite=True)
    assert {name: digest(run / name) for name in published} == before
    assert load_model(run / "model.safetensors").width == 4


def test_errors_name_the_output_not_its_temporary(tmp_path: Path) -> None:
    target = tmp_path / "scene_prob.tif"
    with pytest.raises(SlidemapError) as caught, staged({"prob": target}) as tmp:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp["prob"]))
    message = str(caught.value)
    assert str(target) in message and "no space left" in message
    assert ".staged" not in message and ".partial" not in message
    assert final_path(tmp["prob"]) == target


# -- temporaries of dead runs, links that loop -------------------------------------------------

def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_temporaries_of_dead_processes_are_swept(tmp_path: Path) -> None:
    dead = tmp_path / f".scene_prob.0123abcd-{HOST}-{dead_pid()}.partial.tif"
    live = tmp_path / f".scene_mask.0123abcd-{HOST}-{os.getpid()}.staged.tif"
    elsewhere = tmp_path / f".scene_mask.0123abcd-{'0' if HOST[0] != '0' else '1'}{HOST[1:]}-" \
        f"{dead_pid()}.partial.tif"  # another machine's, on a shared folder: cannot be checked
    mine = tmp_path / ".notes.txt"
    for path in (dead, live, elsewhere, mine):
        path.write_text("x")
    assert sweep_stale(tmp_path) == [dead]
    assert not dead.exists() and live.exists() and elsewhere.exists() and mine.exists()
    dead2 = tmp_path / f".model.89abcdef-{HOST}-{dead_pid()}.partial.safetensors"
    dead2.write_text("x")
    make_output_dir(tmp_path)  # every command creates its folder this way
    assert not dead2.exists()


def test_gdal_side_files_of_a_dead_runs_temporaries_are_swept(tmp_path: Path) -> None:
    """A predict killed while GDAL's COG driver built the overviews left its
    NAME.partial.tif.ovr.tmp, which no later run removed: it is the run's temporary too."""
    temporary = f"..scene_prob.0123abcd-{HOST}-{dead_pid()}.staged.4567cdef-{HOST}-" \
        f"{dead_pid()}.partial.tif"
    side = tmp_path / f"{temporary}.ovr.tmp"
    side.write_text("x")
    assert sweep_stale(tmp_path) == [side]
    assert final_path(side) == tmp_path / "scene_prob.tif.ovr.tmp"


def test_a_killed_write_leaves_a_temporary_the_next_run_sweeps(tmp_path: Path) -> None:
    script = ("import os, sys\nfrom slidemap.io.atomic import atomic_path\n"
              "with atomic_path(sys.argv[1]) as tmp:\n"
              "    tmp.write_text('half')\n    os._exit(9)\n")
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "out.json")], check=False)
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".out.") and ".partial" in left[0]
    make_output_dir(tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["output", "out folder", "image"])
def test_a_symlink_loop_is_one_line(tmp_path: Path, tiny_scene: dict[str, Path],
                                    tiny_model: Path, run_cli, where: str) -> None:
    out = tmp_path / "out"
    image = tiny_scene["image"]
    if where == "output":
        out.mkdir()
        (out / "scene_prob.tif").symlink_to(out / "scene_prob.tif")
        loop = out / "scene_prob.tif"
    elif where == "out folder":
        out.symlink_to(out)
        loop = out
    else:
        image = tmp_path / "loop.tif"
        image.symlink_to(image)
        loop = image
    code, err = run_cli("predict", image, "--dem", tiny_scene["dem"], "--model", tiny_model,
                        "--out", out)
    one_error(code, err, loop)


def test_atomic_path_without_overwrite_never_replaces(tmp_path: Path) -> None:
    target = tmp_path / "figures.json"
    with atomic_path(target, overwrite=False) as tmp:
        tmp.write_text("first")
    with pytest.raises(SlidemapError, match="exists"), \
            atomic_path(target, overwrite=False) as tmp:
        tmp.write_text("second")
    assert target.read_text() == "first" and [p.name for p in tmp_path.iterdir()] == [
        "figures.json"]


def test_two_trainings_into_one_run_folder_cannot_interleave(
        tmp_path: Path, tiny_scene: dict[str, Path]) -> None:
    from slidemap.io.atomic import LOCK_NAME, folder_lock
    from slidemap.schema.config import load_config
    from slidemap.workflows.train import train_run

    config = load_config(config_file(tmp_path / "run.yaml", tiny_scene))
    run = tmp_path / "run"
    with folder_lock(run, "run folder"):  # another run is writing there
        with pytest.raises(SlidemapError, match="another slidemap run"):
            train_run(config, run)
        assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]
    assert not run.exists()  # the folder the lock made is gone with it
    train_run(config, run)
    assert (run / "model.safetensors").exists() and not (run / LOCK_NAME).exists()
