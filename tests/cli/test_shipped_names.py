"""A shipped model is named bare (``slidemap predict --model slidemap-rgb-sites``) from any
folder: an installed slidemap keeps them in site-packages, which nobody should have to type.
A model file of that name in the current folder still wins."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import rasterio
from factories import TINY_TRAINING, run_config, tiny_bundle, write_config

from slidemap import api
from slidemap.io import modelfile
from slidemap.io.modelfile import load_model, save_model

NAME = "slidemap-tiny"


@pytest.fixture
def shipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A shipped-models folder with one tiny model, ``NAME``; the working folder is elsewhere."""
    folder = (tmp_path / "shipped").resolve()
    save_model(tiny_bundle(mean=[60.0, 60.0, 60.0, 10.0], std=[30.0, 30.0, 30.0, 5.0]),
               folder / NAME)
    monkeypatch.setattr(modelfile, "MODELS_DIR", folder)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return folder


def recorded_model(prob: Path) -> tuple[str, str]:
    with rasterio.open(prob) as ds:
        tags = ds.tags()
    return tags["SLIDEMAP_MODEL"], tags["SLIDEMAP_MODEL_SHA256"]


def test_predict_takes_a_shipped_models_name_and_records_its_file(shipped, tiny_scene,
                                                                  run_cli) -> None:
    code, err = run_cli("predict", tiny_scene["image"], "--dem", tiny_scene["dem"],
                        "--model", NAME, "--out", "out")
    assert code == 0, err
    weights = shipped / f"{NAME}.safetensors"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert recorded_model(Path("out") / "scene_prob.tif") == (str(weights), digest)


def test_export_takes_a_shipped_models_name(shipped, run_cli) -> None:
    code, err = run_cli("export", NAME, "--weights", "float16", "--out", "small")
    assert code == 0, err
    assert load_model("small").weights_dtype == "float16"


def test_a_model_file_of_the_name_here_wins(shipped, tiny_scene, run_cli) -> None:
    local = save_model(tiny_bundle(seed=1, mean=[60.0, 60.0, 60.0, 10.0],
                                   std=[30.0, 30.0, 30.0, 5.0]), Path(NAME))
    code, err = run_cli("predict", tiny_scene["image"], "--dem", tiny_scene["dem"],
                        "--model", NAME, "--out", "out")
    assert code == 0, err
    assert recorded_model(Path("out") / "scene_prob.tif")[1] \
        == hashlib.sha256(local.read_bytes()).hexdigest()


def test_an_unknown_name_lists_the_shipped_ones(shipped, run_cli) -> None:
    code, err = run_cli("export", "slidemap-tinny", "--weights", "float16", "--out", "small")
    assert code == 1 and err.count("\n") == 1, err
    assert "slidemap-tinny.safetensors does not exist" in err and f"({NAME})" in err


def test_a_name_with_a_folder_is_not_looked_for_among_the_shipped(shipped, run_cli) -> None:
    code, err = run_cli("export", f"sub/{NAME}", "--weights", "float16", "--out", "small")
    assert code == 1 and "sub/slidemap-tiny.safetensors does not exist" in err, err
    assert "shipped" not in err


def test_a_configs_init_and_finetune_take_a_shipped_models_name(shipped, tiny_scene) -> None:
    """``init: NAME`` starts the run from the shipped model; ``finetune NAME`` records the file
    it started from, to be found again from any folder."""
    raw = run_config([tiny_scene], [tiny_scene], inputs={"image_bands": [1, 2, 3],
                     "slope": True}, training=TINY_TRAINING, init=NAME)
    assert api.train(write_config(Path("run.yaml"), raw), "run").model.is_file()
    del raw["init"]
    tuned = api.finetune(NAME, write_config(Path("tune.yaml"), raw), "tune")
    assert tuned.init == shipped / NAME
    assert load_model(tuned.model).provenance["config"]["init"] == str(tuned.init)


def test_a_configs_init_by_name_is_recorded_as_the_shipped_file(shipped, tiny_scene) -> None:
    """``init: NAME`` was recorded bare in the new model's provenance and finetune.json: its
    lineage, read in a folder holding another NAME.safetensors (or by another install), was
    followed to another model. It is recorded as the file it started from, as ``finetune NAME``
    records it."""
    raw = run_config([tiny_scene], [tiny_scene], inputs={"image_bands": [1, 2, 3],
                     "slope": True}, training=TINY_TRAINING, init=NAME)
    model = api.train(write_config(Path("run.yaml"), raw), "run").model
    assert load_model(model).provenance["config"]["init"] == str(shipped / NAME)
    assert json.loads(Path("run/finetune.json").read_text())["init"] == str(shipped / NAME)


def test_the_real_shipped_models_are_found_by_name(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    stored = api.store_weights("slidemap-rgb-sites", "rgb", "float16")
    assert stored.bytes_before == (modelfile.MODELS_DIR / "slidemap-rgb-sites.safetensors"
                                   ).stat().st_size
