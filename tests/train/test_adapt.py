"""Scene adaptation: ``slidemap predict --adapt`` within its bounds, pseudo-labels drawn only
from confident pixels, the input model untouched, adapted provenance, and the protocol's
measurement that never trains on the labels of the ground it scores."""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from factories import mirrored_scene, tiny_bundle, write_scene

from slidemap.data.dataset import RandomWindows, load_scene_arrays
from slidemap.data.scene import IGNORE
from slidemap.errors import SlidemapError, SlidemapWarning
from slidemap.infer.patches import predict_arrays
from slidemap.infer.predict import PredictOptions
from slidemap.io.modelfile import load_model, model_paths, save_model
from slidemap.io.provenance import sha256_file
from slidemap.schema.config import load_config
from slidemap.train import adapt as adapt_module
from slidemap.train.adapt import (
    AdaptOptions,
    adapt_model,
    adapt_to_scene,
    block_chunk,
    class_balanced,
    scene_chunks,
)
from slidemap.train.adaptval import measure_adaptation
from slidemap.train.crossval import run_crossval
from slidemap.train.lineage import lineage
from slidemap.train.loop import train

SIDE = 96


def landslide_scene(root: Path, name: str = "scene", seed: int = 0, invert: bool = False
                    ) -> dict[str, str]:
    """Bright squares on a darker slope ('landslides'), a nodata strip on the left; ``invert``
    swaps the labels (0 ↔ 1) and nothing else."""
    rng = np.random.default_rng(seed)
    image = rng.integers(40, 90, size=(3, SIDE, SIDE)).astype(np.uint8)
    labels = np.zeros((SIDE, SIDE), dtype=np.uint8)
    for top, left in rng.integers(10, SIDE - 22, size=(5, 2)):
        labels[top:top + 12, left:left + 12] = 1
    image[:, labels == 1] += 110
    image[:, :, :6] = 0
    if invert:
        labels = 1 - labels
    labels[:, :6] = 255
    rows, cols = np.mgrid[0:SIDE, 0:SIDE]
    dsm = (1000.0 * (seed + 1) + 0.3 * cols + 0.2 * rows).astype(np.float32)
    return {key: str(path) for key, path in write_scene(root, name, image, dsm, labels).items()}


def run_config(root: Path, scenes: list[dict[str, str]], name: str = "tiny") -> Path:
    raw = {"name": name, "data": {"train": scenes},
           "inputs": {"image_bands": [1, 2, 3], "slope": True},
           "model": {"name": "unet", "width": 4, "options": {"depth": 2}},
           "loss": {"bce": 1.0, "dice": 1.0},
           "training": {"epochs": 8, "batch_size": 4, "tile": 32, "windows_per_epoch": 32,
                        "precision": "fp32", "min_valid": 0.1, "lr": 0.01},
           "predict": {"tile": 48, "overlap": 8, "batch_size": 4},
           "crossval": {"blocks": [1, 2], "folds": 2, "seeds": [0]}}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], Path]:
    """A scene and a tiny U-Net trained on it for a few seconds: confident where it is clear."""
    root = tmp_path_factory.mktemp("adapt")
    scene = landslide_scene(root)
    model = train(load_config(run_config(root, [scene])), root / "run")
    return scene, model


def fast(**values: object) -> AdaptOptions:
    return AdaptOptions(**{"minutes": 0.5, "windows": 24, "batch_size": 4, "tile": 32,
                           "keep": (0.3, 0.6), **values})


def test_a_block_of_a_south_up_scene_is_predicted_north_up(
        tiny_scene: dict[str, Path], tmp_path: Path) -> None:
    """crossval --adapt draws a block's pseudo-labels north up, as predict --adapt reads its
    chunks: a block of a scene stored south up and east to west lost the scene's flips and
    was predicted upside down."""
    mirrored = mirrored_scene(tiny_scene, tmp_path / "m", (True, True))
    arrays = load_scene_arrays(mirrored["image"], None, mirrored["dem"], tiny_bundle().inputs)
    chunk = block_chunk(arrays, 20, 70, 30, 80, margin=8)
    assert chunk.flips == arrays.flips == (True, True)


def test_pseudo_labels_are_the_most_confident_pixels_of_each_class(
        trained: tuple[dict[str, str], Path], monkeypatch: pytest.MonkeyPatch) -> None:
    scene, model = trained
    bundle = load_model(model)
    arrays = load_scene_arrays(Path(scene["image"]), None, Path(scene["dem"]), bundle.inputs)
    chunk = block_chunk(arrays, 20, 70, 30, 80, margin=8)
    rounds: list[tuple[np.ndarray, np.ndarray]] = []
    trained_on: list[list] = []
    real_round, real_init = adapt_module.pseudo_round, RandomWindows.__init__

    def spy_round(predictor, targets, label, options):
        pseudo, row = real_round(predictor, targets, label, options)
        for target, labelled in zip(targets, pseudo, strict=True):
            prob = predict_arrays(predictor, target.arrays.x, target.arrays.readable, options)
            rounds.append((prob, labelled.target))
            assert labelled.inputs_valid is target.arrays.readable  # uncertain ground is read
        return pseudo, row

    def spy_init(self, scenes, *args, **kwargs):
        trained_on.append([s.target for s in scenes])
        real_init(self, scenes, *args, **kwargs)

    monkeypatch.setattr(adapt_module, "pseudo_round", spy_round)
    monkeypatch.setattr(RandomWindows, "__init__", spy_init)
    adapted = adapt_model(bundle, [chunk], fast(rounds=2), PredictOptions(precision="fp32"))

    core = chunk.target == 0
    assert core.sum() == 50 * 50 and not core[:8].any() and not core[:, :8].any()
    decision = bundle.threshold
    for (prob, labels), used, portion in zip(rounds, trained_on, (0.3, 0.6), strict=True):
        assert not (labels != IGNORE)[~core].any()  # only the target's own pixels
        for value, predicted in ((1, core & (prob >= decision)), (0, core & (prob < decision))):
            kept = labels == value
            assert not (kept & ~predicted).any()  # a label is the predicted class
            assert predicted.any() and abs(kept.sum() / predicted.sum() - portion) < 0.02
            left = predicted & ~kept
            closer = prob[kept].min() >= prob[left].max() if value else \
                prob[kept].max() <= prob[left].min()
            assert closer  # the kept are the most confident of their class
        assert used == [labels]  # the network trains on exactly these labels
    assert adapted.record["windows"] == 24 and adapted.record["stopped_by"] == "windows"
    assert [r["keep"] for r in adapted.record["rounds"]] == [0.3, 0.6]


def test_pseudo_labels_split_the_classes_where_the_map_does(
        trained: tuple[dict[str, str], Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """predict --adapt --threshold 0.3 drew the map at 0.3 but split the pseudo-labels at the
    model's threshold, so pixels the map called landslide were taught to the copy as
    background; --scales were ignored alike. The rounds now predict as the map does."""
    scene, model = trained
    bundle = load_model(model)
    arrays = load_scene_arrays(Path(scene["image"]), None, Path(scene["dem"]), bundle.inputs)
    decisions: list[float] = []
    scales: list[tuple[float, ...]] = []
    real_labeller, real_round = adapt_module.class_balanced, adapt_module.pseudo_round

    def spy_labeller(portion, decision, seed=0):
        decisions.append(decision)
        return real_labeller(portion, decision, seed)

    def spy_round(predictor, targets, label, options):
        scales.append(predictor.scales)
        return real_round(predictor, targets, label, options)

    monkeypatch.setattr(adapt_module, "class_balanced", spy_labeller)
    monkeypatch.setattr(adapt_module, "pseudo_round", spy_round)
    adapt_model(bundle, [block_chunk(arrays, 20, 70, 30, 80, margin=8)], fast(rounds=2),
                PredictOptions(precision="fp32", threshold=0.3, scales=(1.0, 0.5)))
    assert bundle.threshold != 0.3 and decisions == [0.3, 0.3]
    assert scales == [(1.0, 0.5), (1.0, 0.5)]


def test_tied_probabilities_keep_the_portion_not_every_tie() -> None:
    """Probabilities on few steps tie: the share kept of each class is still the portion."""
    prob = np.full((10, 10), 0.38, np.float32)
    prob[0, :5] = 0.1
    prob[9] = 0.9
    valid = np.ones(prob.shape, bool)
    valid[5, 5] = False
    (labels,) = class_balanced(0.4, 0.5)([prob], [valid])
    assert (labels == 0).sum() == math.ceil(0.4 * 89) and (labels == 1).sum() == 4
    assert (labels[0, :5] == 0).all()  # the most confident background first
    assert labels[5, 5] == IGNORE and not ((labels == 1) & (prob < 0.5)).any()
    # Equally sure pixels are drawn at random, not in raster order from the first target on.
    tied = [np.full((10, 10), 0.2, np.float32)] * 2
    first, second = class_balanced(0.4, 0.5)(tied, [np.ones((10, 10), bool)] * 2)
    assert 20 < (first == 0).sum() < 60 and 20 < (second == 0).sum() < 60
    assert (first == 0).sum() + (second == 0).sum() == 80 and (first[8:] == 0).any()


class SlowClock:
    """A clock for ``adapt_module.time``: each reading ``tick`` s after the last, whatever else
    the machine runs (on a loaded CI machine the wall clock ran out before a window trained)."""

    def __init__(self, tick: float = 0.5) -> None:
        self.now = 0.0
        self.tick = tick

    def perf_counter(self) -> float:
        self.now += self.tick
        return self.now


def test_predict_adapt_runs_within_its_bound_and_records_it(
        trained: tuple[dict[str, str], Path], tmp_path: Path, run_cli,
        monkeypatch: pytest.MonkeyPatch) -> None:
    scene, model = trained
    before = {p: sha256_file(p) for p in model_paths(model)}
    monkeypatch.chdir(tmp_path)  # models named relatively are recorded absolutely
    monkeypatch.setattr(adapt_module, "time", SlowClock(tick=0.05))
    code, err = run_cli("predict", scene["image"], "--dem", scene["dem"], "--model",
                        os.path.relpath(model), "--out", tmp_path / "map", "--precision",
                        "fp32", "--adapt", "--adapt-minutes", "0.03", "--adapt-windows",
                        "100000", "--adapt-save", "adapted")
    assert code == 0, err
    assert "adapted to the scene" in err
    assert {p: sha256_file(p) for p in model_paths(model)} == before  # input untouched
    with rasterio.open(tmp_path / "map" / "scene_prob.tif") as ds:
        tags = ds.tags()
    record = json.loads(tags["SLIDEMAP_ADAPTED"])
    assert tags["SLIDEMAP_MODEL"] == str(model.resolve())
    assert tags["SLIDEMAP_MODEL_SHA256"] == before[model_paths(model)[0]]
    assert tags["SLIDEMAP_ADAPTED_MODEL"] == str((tmp_path / "adapted.safetensors").resolve())
    assert record["stopped_by"] == "time" and 0 < record["windows"] < 100000, record
    assert record["seconds"] <= 0.03 * 60 + 2  # the bound, and at most a step or a round late
    saved = load_model(tmp_path / "adapted")
    assert saved.provenance["adapted"]["from"] == str(model.resolve())
    assert saved.provenance["adapted"]["from_sha256"] == before[model_paths(model)[0]]
    original = load_model(model).model.state_dict()
    changed = [k for k, v in saved.model.state_dict().items()
               if v.is_floating_point() and not np.allclose(v.numpy(), original[k].numpy())]
    assert changed  # it did train



def test_a_saved_adapted_model_names_the_scene_it_learnt(
        trained: tuple[dict[str, str], Path], tmp_path: Path, run_cli,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The copy learns the scene's imagery, as a self-training target is learnt, but its file
    did not name the scene: finetune validating there (or crossval scoring it) took the
    figures as held out."""
    scene, model = trained
    other = landslide_scene(tmp_path / "other", "other", seed=1)
    monkeypatch.chdir(tmp_path)  # a scene named relatively is recorded absolutely
    code, err = run_cli("predict", os.path.relpath(other["image"]), "--dem", other["dem"],
                        "--model", model, "--out", tmp_path / "map", "--precision", "fp32",
                        "--adapt", "--adapt-windows", "24", "--adapt-save", "adapted")
    assert code == 0, err
    saved = tmp_path / "adapted.safetensors"
    assert load_model(saved).provenance["adapted"]["image"] == str(Path(other["image"]).resolve())
    assert lineage(saved).images == [scene["image"], str(Path(other["image"]).resolve())]


def test_an_adaptation_that_trains_nothing_warns_and_says_so(
        trained: tuple[dict[str, str], Path], tmp_path: Path, run_cli,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """When the time bound goes before any window trains (setting up, or pseudo-labelling a
    large scene, took it), the map is the unadapted one: the user is warned on one line and the
    provenance says nothing was trained, rather than a map tagged as adapted with only an info
    line."""
    scene, model = trained
    base = ("predict", scene["image"], "--dem", scene["dem"], "--model", model,
            "--precision", "fp32")
    code, err = run_cli(*base, "--out", tmp_path / "plain")
    assert code == 0, err
    ticks = iter(range(0, 10**9, 1000))  # every clock reading 1000 s after the last
    monkeypatch.setattr(adapt_module.time, "perf_counter", lambda: float(next(ticks)))
    code, err = run_cli(*base, "--out", tmp_path / "map", "--adapt")
    assert code == 0, err
    warned = [line for line in err.splitlines() if "trained no window" in line]
    assert len(warned) == 1 and "--adapt-minutes" in warned[0], err
    # the bound went before the first round: no prediction ran, so none "took" it
    assert "before the scene was predicted" in warned[0] and "predicting" not in warned[0], err
    assert "adapted to the scene" not in err
    with rasterio.open(tmp_path / "map" / "scene_prob.tif") as adapted, \
            rasterio.open(tmp_path / "plain" / "scene_prob.tif") as plain:
        record = json.loads(adapted.tags()["SLIDEMAP_ADAPTED"])
        assert (adapted.read(1) == plain.read(1)).all()
    assert record["trained"] is False and record["windows"] == 0




def test_a_slow_prediction_of_the_chunks_shortens_training_not_the_bound(
        trained: tuple[dict[str, str], Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Pseudo-labelling a large scene's chunks on a slow CPU took longer (70 s) than a round's
    share of --adapt-minutes 3: every round found its training deadline gone, and each next
    round predicted the chunks again with the unchanged network, ending at 210 s with nothing
    trained. A round now trains for its share of the time left after its prediction, and none
    starts whose prediction (timed as the last one) would not end within the bound."""
    scene, model = trained
    bundle = load_model(model)
    arrays = load_scene_arrays(Path(scene["image"]), None, Path(scene["dem"]), bundle.inputs)
    chunk = block_chunk(arrays, 20, 70, 30, 80, margin=8)
    clock, real_round = SlowClock(), adapt_module.pseudo_round

    def slow_round(*args, **kwargs):
        clock.now += 70
        return real_round(*args, **kwargs)

    monkeypatch.setattr(adapt_module, "time", clock)
    monkeypatch.setattr(adapt_module, "pseudo_round", slow_round)
    record = adapt_model(bundle, [chunk], fast(minutes=3, windows=100_000),
                         PredictOptions(precision="fp32")).record
    assert record["trained"] and record["rounds"][0]["windows"] > 0, record
    assert record["seconds"] <= 3 * 60 and record["stopped_by"] == "time"


def test_the_time_bound_covers_reading_the_chunks(
        trained: tuple[dict[str, str], Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """--adapt-minutes, "wall time the adaptation may take", started its clock once the model
    was loaded and the scene's chunks read: chunks that took the whole bound to read were
    still trained on for the whole bound again."""
    scene, model = trained
    clock, real_chunks = SlowClock(), adapt_module.scene_chunks

    def slow_chunks(*args, **kwargs):
        clock.now += 200  # past the 3 minutes
        return real_chunks(*args, **kwargs)

    monkeypatch.setattr(adapt_module, "time", clock)
    monkeypatch.setattr(adapt_module, "scene_chunks", slow_chunks)
    with pytest.warns(SlidemapWarning, match="trained no window"):
        record = adapt_to_scene(model, scene["image"], scene["dem"], fast(minutes=3),
                                PredictOptions(precision="fp32")).record
    assert not record["trained"] and record["rounds"] == [] and record["seconds"] > 3 * 60


def test_the_saved_adapted_model_makes_the_map_it_made(
        trained: tuple[dict[str, str], Path], tmp_path: Path, run_cli) -> None:
    """From a model stored in int8 (as the shipped ones are), --adapt-save keeps the float32
    weights that mapped the scene: mapping again with the saved file gives the same map."""
    scene, model = trained
    stored = save_model(replace(load_model(model), weights_dtype="int8"), tmp_path / "int8")
    code, err = run_cli("predict", scene["image"], "--dem", scene["dem"], "--model", stored,
                        "--out", tmp_path / "map", "--precision", "fp32", "--adapt",
                        "--adapt-windows", "24", "--adapt-save", tmp_path / "adapted")
    assert code == 0, err
    code, err = run_cli("predict", scene["image"], "--dem", scene["dem"], "--model",
                        tmp_path / "adapted.safetensors", "--out", tmp_path / "again",
                        "--precision", "fp32")
    assert code == 0, err
    with rasterio.open(tmp_path / "map" / "scene_prob.tif") as a, \
            rasterio.open(tmp_path / "again" / "scene_prob.tif") as b:
        np.testing.assert_allclose(a.read(1), b.read(1), atol=1e-5)

def test_predict_adapt_refuses_bad_values_in_one_line(
        trained: tuple[dict[str, str], Path], tmp_path: Path, run_cli) -> None:
    """A value out of range is a wrong command line (exit 2, as --threshold 2 is); the
    adaptation's own values exited 1."""
    scene, model = trained
    base = ("predict", scene["image"], "--dem", scene["dem"], "--model", model,
            "--out", tmp_path / "map")
    (tmp_path / "models").mkdir()
    for extra, expected, exit_code in [
            (("--adapt", "--adapt-minutes", "0"), "--adapt-minutes 0 must", 2),
            (("--adapt", "--adapt-windows", "2"), "--adapt-windows 2 is fewer", 2),
            (("--adapt-minutes", "2"), "--adapt-minutes apply with --adapt", 2),
            (("--adapt", "--normalise", "scene"), "drop --normalise scene", 2),
            (("--adapt", "--model", model), "not an ensemble", 2),
            (("--adapt", "--adapt-save", model),
             "would overwrite an input: choose another --adapt-save", 1),
            # the model was saved beside the folder (models.safetensors), not in it
            (("--adapt", "--adapt-save", tmp_path / "models"), "models is a folder", 1)]:
        code, err = run_cli(*base, *extra)
        assert code == exit_code and len(err.strip().splitlines()) == 1, err
        assert expected in err
    assert not (tmp_path / "map").exists() and not list(tmp_path.glob("models.*"))
    with pytest.raises(SlidemapError, match=r"keep 0\.8 → 0\.4 must grow"):
        AdaptOptions(keep=(0.8, 0.4))


def test_scene_chunks_stay_within_the_memory_share(trained: tuple[dict[str, str], Path]
                                                   ) -> None:
    scene, model = trained
    bundle = load_model(model)
    chunks = scene_chunks(scene["image"], scene["dem"], bundle, None)
    assert len(chunks) == 1 and chunks[0].target.shape == (SIDE, SIDE)
    assert set(np.unique(chunks[0].target)) == {0, IGNORE}  # no label is ever read
    assert not (chunks[0].target[:, :6] == 0).any()  # nodata is never a pseudo-label


def test_scene_chunks_of_a_south_up_scene_face_north(tmp_path: Path) -> None:
    """--adapt's chunks of a scene stored south up hold its ground north up, as the map's
    windows reach the network (they were stored upside down: the copy learnt, and labelled
    itself, on imagery the map never shows it)."""
    scene = landslide_scene(tmp_path / "north")
    south = mirrored_scene({k: Path(v) for k, v in scene.items()}, tmp_path / "south",
                           (True, False))
    north_chunk = scene_chunks(scene["image"], scene["dem"], tiny_bundle(), None)[0]
    south_chunk = scene_chunks(south["image"], south["dem"], tiny_bundle(), None)[0]
    np.testing.assert_allclose(south_chunk.x, north_chunk.x, atol=1e-4)
    np.testing.assert_array_equal(south_chunk.target, north_chunk.target)
    assert not np.allclose(north_chunk.x[:, ::-1], north_chunk.x)  # not the same either way


def test_scene_chunks_are_as_many_as_the_memory_share_holds(
        trained: tuple[dict[str, str], Path], monkeypatch: pytest.MonkeyPatch) -> None:
    scene, model = trained
    bundle = load_model(model)
    side = 24 + 2 * bundle.predict.overlap
    per_chunk = side * side * (8 * len(bundle.inputs.channels) + 16)
    monkeypatch.setattr(adapt_module, "CHUNK_SIDE", 24)
    monkeypatch.setattr(adapt_module, "MEMORY_SHARE", 3.5 * per_chunk / (64 * 2**20))
    chunks = scene_chunks(scene["image"], scene["dem"], bundle, 64)
    assert len(chunks) == 3  # of 16 with data
    assert all(c.x.shape[1] <= side and c.x.shape[2] <= side for c in chunks)
    assert all((c.target == 0).sum() <= 24 * 24 for c in chunks)
    monkeypatch.setattr(adapt_module, "MEMORY_SHARE", 0.5 * per_chunk / (64 * 2**20))
    with pytest.raises(SlidemapError, match="raise --memory-mb"):
        scene_chunks(scene["image"], scene["dem"], bundle, 64)


def test_protocol_measurement_never_trains_on_the_labels_it_scores(tmp_path: Path) -> None:
    """The same fold models adapt exactly alike to scenes whose labels are all inverted: the
    adaptation reads no label; only the scores move."""
    records = []
    for invert in (False, True):
        root = tmp_path / ("inverted" if invert else "plain")
        root.mkdir()
        scenes = [landslide_scene(root, "east", 1, invert),
                  landslide_scene(root, "west", 2, invert)]
        config = load_config(run_config(root, scenes))
        if invert:  # the same fold models and blocks as the plain run
            shutil.copytree(tmp_path / "plain" / "cv" / "candidate", root / "cv" / "candidate")
            shutil.copy(tmp_path / "plain" / "cv" / "blocks_layout.json", root / "cv")
        else:
            run_crossval(config, root / "cv")
        summary = measure_adaptation(config, root / "cv", fast(windows=8, rounds=2))
        runs = sorted((root / "cv" / "adapt" / "s0").glob("*.json"))
        records.append([json.loads(p.read_text()) for p in runs])
        assert "Scene adaptation in the protocol" in (root / "cv" / "adapt" /
                                                      "summary.md").read_text()
        assert "comparison" in summary and len(summary["cost"]) == len(runs) == 4
    def untimed(rounds: list[dict]) -> list[dict]:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in rounds]

    for plain, inverted in zip(*records, strict=True):  # the same pseudo-labels and losses
        assert untimed(plain["adaptation"]["rounds"]) == untimed(inverted["adaptation"]["rounds"])
        assert plain["as_trained"]["counts"] != inverted["as_trained"]["counts"]
        assert plain["adapted"]["counts"] != inverted["adapted"]["counts"]
