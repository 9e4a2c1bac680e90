"""The Python API: str paths everywhere, typed frozen results, the same files as the CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from factories import tiny_run

from slidemap import api
from slidemap.models import build_model, count_parameters
from slidemap.schema.run import ModelSettings
from slidemap.workflows import suggest as suggest_workflow

OPTIONS = api.PredictOptions(tile=48, overlap=16, precision="fp32")


def test_predict_and_evaluate_take_str_paths(tiny_scene: dict[str, Path], tiny_model: Path,
                                             tmp_path: Path) -> None:
    out = str(tmp_path / "map")
    result = api.predict(str(tiny_scene["image"]), out, str(tiny_scene["dem"]), str(tiny_model),
                         OPTIONS)
    assert isinstance(result, api.PredictResult)
    assert result.prob == Path(out) / "scene_prob.tif" and result.prob.exists()
    assert set(result.files) >= {"prob", "mask", "inventory", "style", "stac"}
    assert result.valid_pixels > 0 and result.windows > 0 and result.working_pixel_m == 0.5
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.valid_pixels = 0  # type: ignore[misc]

    scored = api.evaluate(str(tiny_scene["mask"]), prediction=str(result.prob),
                          out_dir=str(tmp_path / "scored"))
    assert isinstance(scored, api.EvaluateResult)
    assert scored.prediction == str(result.prob) and scored.model is None
    assert scored.metrics == json.loads((tmp_path / "scored" / "metrics.json").read_text()
                                        )["metrics"]
    assert scored.plots is not None and all(p.exists() for p in scored.plots.values())
    assert scored.best["f1"] >= scored.metrics["f1"] - 1e-9  # the sweep holds the threshold used


def test_train_and_store_weights_take_str_paths(tiny_scene: dict[str, Path],
                                                tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tiny_run(tiny_scene, epochs=1)))
    trained = api.train(str(config), str(tmp_path / "run"), seed=1)
    assert trained == api.TrainResult(tmp_path / "run", tmp_path / "run" / "model.safetensors")
    stored = api.store_weights(str(trained.model), str(tmp_path / "small"), "float16")
    assert stored.model.exists() and stored.bytes < stored.bytes_before
    assert stored.weights_dtype == "float16"


def test_every_path_parameter_takes_str_or_pathlike() -> None:
    """The README: each function takes ``str`` or ``os.PathLike`` paths; ``report``'s
    ``image`` was typed ``str`` alone, so a type checker refused a Path there."""
    hints = typing.get_type_hints(api.report)
    assert os.PathLike[str] in typing.get_args(hints["image"])


def test_every_function_says_in_its_docstring_what_it_returns() -> None:
    """``help(api.train)`` said what it trains, not that it returns the run folder and model;
    each function's docstring names the result class it returns."""
    functions = [getattr(api, name) for name in api.__all__
                 if getattr(getattr(api, name), "__module__", None) == "slidemap.api"
                 and callable(getattr(api, name))]
    assert len(functions) >= 16
    for function in functions:
        returned = typing.get_type_hints(function)["return"]
        result = next((t for t in (returned, *typing.get_args(returned))
                       if dataclasses.is_dataclass(t)), None)
        if result is not None:
            assert result.__name__ in (function.__doc__ or ""), function.__name__


def test_architectures_are_typed_rows() -> None:
    rows = api.architectures(in_channels=5)
    assert {"unet", "fusion"} <= {row.name for row in rows}
    assert all(isinstance(row, api.Architecture) and row.parameters > 0 for row in rows)


def test_architectures_count_at_a_configs_default_width() -> None:
    """slidemap models counted at width 32 (U-Net 7.85 M, fusion 18.4 M) where a config trains
    at model.width 16 and every document quotes width 16 (U-Net 1.96 M, fusion 4.61 M)."""
    rows = {row.name: row for row in api.architectures(in_channels=5)}
    width = ModelSettings().width
    assert {row.width for row in rows.values()} == {width} == {16}
    for name in ("unet", "fusion", "segformer"):
        assert rows[name].parameters == count_parameters(build_model(name, 5, width))
    assert rows["unet"].parameters == 1_964_385  # models/README.md, benchmarks/*.md


def test_the_api_names_the_exception_it_raises(tmp_path: Path) -> None:
    """A pipeline catches ``api.SlidemapError`` without knowing ``slidemap.errors``."""
    assert issubclass(api.UsageError, api.SlidemapError)
    with pytest.raises(api.SlidemapError, match="does not exist"):
        api.predict(tmp_path / "missing.tif", tmp_path / "out")


@pytest.mark.parametrize("values", [{"tile": 3}, {"overlap": -4}, {"batch_size": 0},
                                    {"workers": -1}, {"normalise": "x"}, {"tile": 64.0},
                                    {"memory_mb": "512"}, {"memory_mb": 32},
                                    {"scheduler": 8786}])
def test_predict_options_are_checked_as_the_cli_checks_them(values: dict) -> None:
    """The CLI refuses --tile 3 or --workers -1; through the API, tile=3 ran for hours (a
    window every pixel) and workers=-1 never returned; memory_mb="512" was a TypeError from
    deep inside once the scene was open, scheduler=8786 one from Dask's client."""
    with pytest.raises(api.UsageError, match=next(iter(values))):
        api.PredictOptions(**values)


def test_more_dask_workers_than_cores_are_refused_before_any_starts() -> None:
    """--workers 100000 started a local Dask cluster of 100 000 processes, each loading torch
    and the model, until the machine ran out of memory (the run ended in a traceback)."""
    with pytest.raises(api.UsageError, match=r"--workers 100000 .* CPU cores"):
        api.PredictOptions(workers=100_000)
    assert api.PredictOptions(workers=1).workers == 1


@pytest.mark.parametrize("formats", [(), "gpkg"])
def test_inventory_formats_are_checked_before_the_scene_is_mapped(
        tiny_scene: dict[str, Path], tiny_model: Path, tmp_path: Path, formats) -> None:
    """``formats=()`` raised an IndexError once the whole scene was mapped; a bare string was
    read letter by letter ('g' is not known)."""
    with pytest.raises(api.UsageError, match="inventory formats must be a list"):
        api.predict(tiny_scene["image"], tmp_path / "out", tiny_scene["dem"], tiny_model,
                    OPTIONS, formats=formats)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("name", "value"), [("window", "0,0,32,32"), ("box", "1,1,8,8"),
                                            ("window", 32)])
def test_a_window_or_box_not_given_as_numbers_is_refused_as_given(
        tiny_scene: dict[str, Path], tiny_model: Path, tmp_path: Path, name: str,
        value: object) -> None:
    """The CLI's text ``0,0,32,32`` through the API was read character by character ("window
    ('0', ',', '0', ...) is not valid"), and one number was a TypeError from ``tuple()``."""
    with pytest.raises(api.UsageError, match=f"{name} must be 4 whole numbers.*not {value!r}"):
        api.explain(tiny_scene["image"], tmp_path / "x", tiny_scene["dem"], tiny_model,
                    **{name: value})
    assert not (tmp_path / "x").exists()


def test_a_switch_given_as_text_is_refused_before_outputs_are_replaced(
        tiny_scene: dict[str, Path], tiny_model: Path, tmp_path: Path) -> None:
    """``overwrite="false"`` (a setting read from text) is true to Python: it replaced the
    outputs it was meant to keep; ``tta="no"`` ran the 8-fold averaging."""
    first = api.predict(tiny_scene["image"], tmp_path / "out", tiny_scene["dem"], tiny_model,
                        OPTIONS)
    written = first.files["prob"].stat().st_mtime_ns
    with pytest.raises(api.UsageError, match="overwrite must be True or False, not 'false'"):
        api.predict(tiny_scene["image"], tmp_path / "out", tiny_scene["dem"], tiny_model,
                    OPTIONS, overwrite="false")
    assert first.files["prob"].stat().st_mtime_ns == written
    with pytest.raises(api.UsageError, match="html_report must be True or False"):
        api.evaluate(tiny_scene["mask"], first.files["prob"], html_report=1)
    with pytest.raises(api.UsageError, match="tta must be True or False, not 'no'"):
        api.PredictOptions(tta="no")


def test_the_api_refuses_what_the_cli_cannot_say_with_one_line(
        tiny_scene: dict[str, Path], tiny_model: Path, tmp_path: Path) -> None:
    """Values the CLI's parsing never lets through reached the API raw: a window of two numbers
    (a ValueError from unpacking), a negative sample (numpy's error), -1 input channels (a torch
    error; 10**6 built networks of 300M parameters each)."""
    with pytest.raises(api.UsageError, match=r"window \(0, 0\) is not valid: give col, row"):
        api.explain(tiny_scene["image"], tmp_path / "x", tiny_scene["dem"], tiny_model,
                    window=(0, 0))
    with pytest.raises(api.UsageError, match=r"box \(1, 2\) is not valid"):
        api.explain(tiny_scene["image"], tmp_path / "x", tiny_scene["dem"], tiny_model,
                    box=(1, 2))
    with pytest.raises(api.UsageError, match="sample -1 is not valid"):
        api.bench(tiny_scene["image"], tiny_scene["dem"], tiny_model, OPTIONS, sample=-1)
    for channels in (-1, 0, 10**6):
        with pytest.raises(api.UsageError, match=f"in_channels {channels} is not valid"):
            api.architectures(channels)
    assert not (tmp_path / "x").exists()


def test_suggest_takes_one_labels_file_as_a_path_or_text(
        tiny_scene: dict[str, Path], tiny_model: Path, tmp_path: Path) -> None:
    """One file of labelled boxes: a Path was 'not iterable', text was read letter by letter."""
    first = api.suggest(tiny_model, tiny_scene["image"], tmp_path / "a.gpkg", tiny_scene["dem"],
                        n=2, box=32, options=OPTIONS)
    for labels in (first.boxes, str(first.boxes)):
        out = tmp_path / f"next_{type(labels).__name__}.gpkg"
        again = api.suggest(tiny_model, tiny_scene["image"], out, tiny_scene["dem"], n=2,
                            box=32, labels=labels, options=OPTIONS)
        assert again.skipped_labelled == 2, again


def test_train_leaves_torchs_thread_count_as_the_caller_set_it(
        tiny_scene: dict[str, Path], tmp_path: Path) -> None:
    """A config's ``training.threads`` set torch's process-wide thread count and left it there,
    so a notebook's own work after ``api.train`` ran on the run's one thread."""
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tiny_run(tiny_scene, epochs=1, threads=1)))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        api.train(config, tmp_path / "run")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_calls_that_run_models_leave_the_callers_torch_random_numbers(
        tiny_scene: dict[str, Path], tiny_model: Path, tmp_path: Path) -> None:
    """Training seeded torch's global generator and building networks advanced it, so a
    notebook that seeded torch drew other numbers after any call; each call gives it back."""
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tiny_run(tiny_scene, epochs=1)))
    calls = [lambda: api.train(config, tmp_path / "run"),
             lambda: api.predict(tiny_scene["image"], tmp_path / "map", tiny_scene["dem"],
                                 tiny_model, OPTIONS),
             lambda: api.architectures(4)]
    for call in calls:
        torch.manual_seed(7)
        expected = torch.rand(3)
        torch.manual_seed(7)
        call()
        assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("values", [{"n": 2.5}, {"box": 32.0}, {"spacing": 0.5},
                                    {"n": True}])
def test_suggest_refuses_counts_that_are_not_whole_before_mapping(
        tiny_scene: dict[str, Path], tiny_model: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, values: dict) -> None:
    """``n=2.5`` mapped the whole scene and then failed in the ranking with a TypeError about
    slice indices; a count that is not a whole number is refused before anything is read."""
    monkeypatch.setattr(suggest_workflow, "suggest_boxes", _never_called)
    arguments = {"n": 2, "box": 32, "spacing": 1, **values}
    with pytest.raises(api.UsageError, match=f"--{next(iter(values))} .* whole number"):
        api.suggest(tiny_model, tiny_scene["image"], tmp_path / "boxes.gpkg", tiny_scene["dem"],
                    options=OPTIONS, **arguments)


def _never_called(*args: object, **kwargs: object) -> None:
    raise AssertionError("the scene was mapped before its arguments were checked")


def test_arguments_of_the_wrong_type_are_refused_in_one_line_naming_them(
        tiny_scene: dict[str, Path], tiny_model: Path, tmp_path: Path) -> None:
    """An array for the image was pathlib's TypeError, a number for the model "'int' object is
    not iterable" and a dict of options an AttributeError from inside the engine: none said
    which argument was wrong."""
    image, dem, out = tiny_scene["image"], tiny_scene["dem"], tmp_path / "out"
    calls: list[tuple[str, typing.Callable[[], object]]] = [
        (r"image must be a file or GDAL dataset name .* not ndarray",
         lambda: api.predict(np.zeros((3, 8, 8)), out)),
        (r"dem must be a file .* not int",
         lambda: api.evaluate(tiny_scene["mask"], image=image, dem=5, out_dir=out)),
        (r"model must be a model file .* not int",
         lambda: api.predict(image, out, dem, model=5)),
        (r"options must be an api\.PredictOptions .* not dict",
         lambda: api.predict(image, out, dem, tiny_model, options={"tile": 48})),
        (r"adapt must be an api\.AdaptOptions .* not dict",
         lambda: api.predict(image, out, dem, tiny_model, adapt={"minutes": 1})),
        (r"out_dir must be a file .* not NoneType",
         lambda: api.train(tmp_path / "run.yaml", None)),
    ]
    for message, call in calls:
        with pytest.raises(api.UsageError, match=message):
            call()
    assert not out.exists()


@pytest.mark.parametrize("overrides", ["training.lr=4e-3", {"training.lr": 4e-3}, [0.1]])
def test_overrides_given_as_one_string_are_refused_naming_the_argument(
        tmp_path: Path, overrides: object) -> None:
    """``overrides="training.lr=4e-3"`` (one string, which a type checker takes for a list of
    them) was read letter by letter: "--set 't' must be key.path=value", naming neither the
    argument nor the fix."""
    calls = [lambda: api.train(tmp_path / "run.yaml", tmp_path / "a", overrides=overrides),
             lambda: api.finetune(tmp_path / "m.safetensors", tmp_path / "run.yaml",
                                  tmp_path / "b", overrides=overrides),
             lambda: api.selftrain(tmp_path / "run.yaml", tmp_path / "c", overrides=overrides),
             lambda: api.study(tmp_path / "study.yaml", tmp_path / "d", overrides=overrides),
             lambda: api.crossval(tmp_path / "run.yaml", tmp_path / "e", overrides=overrides)]
    for call in calls:
        with pytest.raises(api.UsageError, match=r"overrides must be a list of KEY=VALUE texts"):
            call()
    assert list(tmp_path.iterdir()) == []


def test_numbers_of_the_wrong_type_are_refused_naming_the_argument(
        tiny_scene: dict[str, Path], tiny_model: Path, tmp_path: Path) -> None:
    """Text or a fraction where a number goes failed deep inside ("must be real number, not
    str" for min_area_m2="5", a torch ValueError for in_channels=3.5), or was blamed on the
    config file ("config run.yaml: training.seed must be a valid integer, got '1'" for
    seed="1"; seeds="0,1" was read character by character)."""
    image, dem, model, out = tiny_scene["image"], tiny_scene["dem"], tiny_model, tmp_path / "o"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tiny_run(tiny_scene, epochs=1)))
    calls: list[tuple[str, typing.Callable[[], object]]] = [
        ("min_area_m2 must be a number", lambda: api.predict(image, out, dem, model,
                                                               min_area_m2="5")),
        ("simplify_m must be a number", lambda: api.predict(image, out, dem, model,
                                                              simplify_m=True)),
        ("scale must be a number", lambda: api.predict_patches(tmp_path, out, model, scale="2")),
        ("seed must be a whole number", lambda: api.train(config, out, seed="1")),
        ("seed must be a whole number", lambda: api.finetune(model, config, out, seed=1.5)),
        ("seeds must be a list of whole numbers", lambda: api.crossval(config, out, seeds="0,1")),
        ("seeds must be a list of whole numbers", lambda: api.crossval(config, out, seeds=3)),
        ("seeds must be a whole number", lambda: api.crossval(config, out, seeds=[0, "1"])),
        ("epochs must be a whole number", lambda: api.new_site(image, config, out, epochs="3")),
        ("member must be a whole number", lambda: api.export_onnx(model, out, member="0")),
        ("sample must be a whole number", lambda: api.bench(image, dem, model, sample="2")),
        ("in_channels must be a whole number", lambda: api.architectures(3.5)),
    ]
    for message, call in calls:
        with pytest.raises(api.UsageError, match=message):
            call()
    assert not out.exists()
    assert api.architectures(np.int64(3))[0].parameters > 0  # numpy's whole numbers are whole


@pytest.mark.parametrize(("values", "message"), [
    ({"minutes": "3"}, "minutes must be a number"), ({"rounds": 2.0}, "rounds must be a whole"),
    ({"tile": "64"}, "tile must be a whole"), ({"keep": (0.4,)}, "keep must be two fractions")])
def test_adapt_options_of_the_wrong_type_are_refused_naming_the_field(
        values: dict, message: str) -> None:
    """``api.AdaptOptions(minutes="3")`` raised "TypeError: must be real number, not str" and
    ``keep=(0.4,)`` a ValueError from unpacking, neither naming the field."""
    with pytest.raises(api.UsageError, match=f"adaptation {message}"):
        api.AdaptOptions(**values)


@pytest.mark.parametrize("progress", [True, "bar"])
def test_a_progress_that_is_not_a_rich_progress_is_refused_before_mapping(
        tiny_scene: dict[str, Path], tiny_model: Path, tmp_path: Path, progress: object) -> None:
    """``progress=True`` (asking for a bar) mapped until the first window, then raised
    "AttributeError: 'bool' object has no attribute 'add_task'" from inside the engine."""
    image, dem, out = tiny_scene["image"], tiny_scene["dem"], tmp_path / "out"
    calls = [lambda: api.predict(image, out, dem, tiny_model, OPTIONS, progress=progress),
             lambda: api.evaluate(tiny_scene["mask"], image=image, dem=dem, model=tiny_model,
                                  out_dir=out, options=OPTIONS, progress=progress),
             lambda: api.suggest(tiny_model, image, out / "boxes.gpkg", dem, n=1, box=32,
                                 options=OPTIONS, progress=progress),
             lambda: api.predict_patches(tmp_path, out, tiny_model, progress=progress),
             lambda: api.new_site(image, tiny_scene["mask"], out, dem=dem, progress=progress)]
    for call in calls:
        with pytest.raises(api.UsageError, match=r"progress must be a rich\.progress\.Progress"):
            call()
    assert not out.exists()


def test_an_empty_list_of_models_is_refused_not_replaced_by_the_shipped_model(
        tiny_scene: dict[str, Path], tmp_path: Path) -> None:
    """``model=sorted(runs.glob("*/model.safetensors"))`` that matched nothing mapped the scene
    with the shipped model, as if no model had been asked for."""
    out = tmp_path / "out"
    with pytest.raises(api.UsageError, match="model is an empty list"):
        api.predict(tiny_scene["image"], out, tiny_scene["dem"], [], OPTIONS)
    with pytest.raises(api.UsageError, match="model is an empty list"):
        api.evaluate(tiny_scene["mask"], image=tiny_scene["image"], model=(), out_dir=out)
    assert not out.exists()
