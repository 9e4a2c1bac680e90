"""Run configs are checked when they are read, before any data loads: YAML that would expand
into gigabytes or recurse without end, text that is not UTF-8, and settings out of range give
one line naming the config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from factories import run_config, write_config

from slidemap.errors import SlidemapError
from slidemap.schema.config import load_config, parse_config, read_yaml, with_seed


def scene_config(tmp_path: Path, scene: dict[str, Path], **training: object) -> Path:
    return write_config(tmp_path / "run.yaml", run_config(
        [scene], inputs={"image_bands": [1, 2, 3], "slope": True},
        training={"epochs": 1, "batch_size": 2, "tile": 64, "windows_per_epoch": 2,
                  "precision": "fp32", **training}))


BOMB = """\
a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
data: {train: *i}
"""


@pytest.mark.parametrize("text, expected", [
    (BOMB, "aliases"),
    ("a: &a [1, *a]\n", "aliases"),
    ("a: " + "[" * 50_000 + "]" * 50_000 + "\n", "nesting|not valid YAML"),
    ("a:\n" + "".join(f"{' ' * (2 * i + 2)}k{i}:\n" for i in range(200)) + "    x: 1\n",
     "nesting|not valid YAML"),
    (b"name: caf\xe9\n", "UTF-8"),
    ("name: [unclosed\n", "line"),
])
def test_yaml_that_bombs_recurses_or_is_not_utf8_is_one_line(tmp_path: Path, text: str | bytes,
                                                              expected: str) -> None:
    path = tmp_path / "bad.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    # the message shows which guard refused it (a bomb expanded would not come back at all);
    # no wall-clock bound: the 50,000-deep case took 14-26 s on a loaded machine
    with pytest.raises(SlidemapError, match=expected) as caught:
        load_config(path)
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)


def test_a_key_set_twice_is_refused_naming_it_and_both_lines(tmp_path: Path,
                                                            tiny_scene: dict[str, Path]) -> None:
    """YAML keys are unique; PyYAML kept the later of two silently, so an ``lr:`` added at the
    top of ``training:`` was trained with the one left below it."""
    path = scene_config(tmp_path, tiny_scene)
    lines = path.read_text().splitlines()
    at = lines.index("training:") + 1
    path.write_text("\n".join([*lines[:at], "  epochs: 5", *lines[at:]]) + "\n")
    with pytest.raises(SlidemapError, match=r"epochs.*twice") as caught:
        load_config(path)
    assert f"lines {at + 1} and " in str(caught.value) and str(path) in str(caught.value)


def test_a_merge_key_overridden_locally_is_not_a_duplicate(tmp_path: Path) -> None:
    path = tmp_path / "merge.yaml"
    path.write_text("base: &b {lr: 1, epochs: 2}\ntraining:\n  <<: *b\n  lr: 3\n")
    assert read_yaml(path)["training"] == {"lr": 3, "epochs": 2}


def test_an_oversized_config_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("# " + "x" * (2**20) + "\n")
    with pytest.raises(SlidemapError, match="bytes"):
        load_config(path)


def test_a_few_aliases_still_work(tmp_path: Path, tiny_scene: dict[str, Path]) -> None:
    scene = {k: str(v) for k, v in tiny_scene.items()}
    text = (f"data:\n  train:\n    - &s {json.dumps(scene)}\n  val:\n    - *s\n"
            "model: {name: unet, width: 4, options: {depth: 2}}\n")
    path = tmp_path / "aliases.yaml"
    path.write_text(text)
    config = load_config(path)
    assert config.val_scenes == config.train_scenes


@pytest.mark.parametrize("key, value", [
    ("lr", -1), ("lr", 0), ("lr", float("nan")), ("lr", "fast"),
    ("threads", "abc"), ("threads", -1), ("threads", 0),
    ("seed", -1), ("seed", 2**40), ("seed", 1.5),
    ("tile", 1), ("tile", 8), ("tile", 100_000),
    ("weight_decay", -0.1), ("min_valid", 2.0), ("epochs", 0),
])
def test_training_settings_out_of_range_fail_at_load(tmp_path: Path, tiny_scene: dict[str, Path],
                                                     key: str, value: object) -> None:
    path = scene_config(tmp_path, tiny_scene, **{key: value})
    with pytest.raises(SlidemapError, match=f"training.{key}|setting '{key}'") as caught:
        load_config(path)
    assert "\n" not in str(caught.value)


def test_a_seed_from_the_command_line_is_checked_too(tmp_path: Path,
                                                    tiny_scene: dict[str, Path]) -> None:
    config = load_config(scene_config(tmp_path, tiny_scene))
    with pytest.raises(SlidemapError, match=r"training\.seed"):
        with_seed(config, -1)
    assert with_seed(config, 7).train.seed == 7


def test_train_with_a_bad_setting_fails_before_data_loads(
        tmp_path: Path, tiny_scene: dict[str, Path], run_cli) -> None:
    """The image does not exist: the bad seed must be what the user hears about first."""
    scene = {**tiny_scene, "image": tmp_path / "not-read-yet.tif"}
    path = scene_config(tmp_path, scene, seed=-1)
    code, err = run_cli("train", path, "--out", tmp_path / "run")
    assert code == 1 and "training.seed" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_an_ensemble_is_not_fine_tuned(tmp_path: Path, tiny_scene: dict[str, Path],
                                       tiny_model: Path) -> None:
    """members trains from scratch; with init, train would skip finetune.json silently."""
    path = scene_config(tmp_path, tiny_scene, members=2)
    with pytest.raises(SlidemapError, match="members: 2 trains an ensemble from scratch") as err:
        load_config(path, (f"init={tiny_model}",))
    assert str(err.value).endswith("or set members: 1")  # not ", got a mapping of [...]"
    assert load_config(path).train.members == 2


@pytest.mark.parametrize(("inputs", "options", "message"), [
    ({"image_bands": [1, 2, 3]}, {}, "no terrain channel"),
    ({"image_bands": [1, 2, 3], "relief_m": [8, 32, 128], "slope": True}, {},
     "elevation_channels: 4"),
    ({"image_bands": [1, 2, 3], "dem": True, "slope": True}, {"elevation_channels": 1},
     "elevation_channels: 2"),
    ({"image_bands": [1, 2, 3], "relief_m": [8, 32, 128], "slope": True},
     {"elevation_channels": 4}, None),
    ({"image_bands": [1, 2, 3], "dem": True, "slope": True}, {}, None),
    ({"image_bands": [1, 2, 3], "dem": True}, {}, "elevation_channels: 1"),  # as documented
    ({"image_bands": [1, 2, 3], "dem": True}, {"elevation_channels": 1}, None),
])
def test_the_fusion_elevation_stream_reads_exactly_the_terrain(tmp_path: Path,
                                                               tiny_scene: dict[str, Path],
                                                               inputs: dict, options: dict,
                                                               message: str | None) -> None:
    """RGB alone fed green and blue to the elevation encoder; three reliefs and slope fed one
    relief to the optical one. Both trained without a word."""
    path = write_config(tmp_path / "fusion.yaml", run_config(
        [tiny_scene], inputs=inputs, model={"name": "fusion", "width": 8, "options": options}))
    if message is None:
        assert load_config(path).model.name == "fusion"
    else:
        with pytest.raises(SlidemapError, match=message):
            load_config(path)


def test_rasters_keep_a_gdal_name_as_written_and_polygons_must_be_local() -> None:
    """Path folded the '//' of /vsizip//abs/d.zip/o.tif (and of https://, HDF5:"f"://sub): a
    raster that is no local file stays the text written; a local one is still a Path. Polygons
    are read by slidemap, from local files only: a GDAL name there is refused in one line."""
    names = {"image": "/vsizip//data/d.zip/o.tif", "dem": 'HDF5:"f.h5"://dem',
             "mask": "/vsicurl/https://x.org/labels.tif"}
    scene = parse_config({"data": {"train": [names]}}).train_scenes[0]
    assert (scene.image, scene.dem, scene.mask) == tuple(names.values())
    local = parse_config({"data": {"train": [{"image": "./o.tif", "mask": "m.gpkg"}]}})
    assert local.train_scenes[0].image == Path("o.tif") and local.input_files() == [
        Path("o.tif"), Path("m.gpkg")]
    assert parse_config({"data": {"train": [names]}}).input_files() == []
    for key, value in (("mask", "/vsizip//data/d.zip/slides.gpkg"),
                       ("aoi", "/vsizip//data/d.zip/aoi.gpkg")):
        with pytest.raises(SlidemapError, match=f"data.train\\[0\\].{key} must be a local "):
            parse_config({"data": {"train": [{**names, key: value}]}})


def test_a_patch_scale_the_model_file_would_refuse_fails_at_load() -> None:
    """inputs.scale 70 trained to the end and wrote a model file that every loader then refused
    as malformed (a model file holds at most 64): the config is refused before any data loads."""
    data = {"data": {"train": [{"l4s": "split"}]}, "inputs": {"scale": 70}}
    with pytest.raises(SlidemapError, match=r"inputs\.scale must be less than or equal to 64"):
        parse_config(data)
    assert parse_config({**data, "inputs": {"scale": 64}}).inputs.scale == 64
