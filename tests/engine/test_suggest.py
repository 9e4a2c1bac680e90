"""What to label next: the most uncertain boxes first, spread out, labelled areas skipped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyogrio.raw
import pytest
import shapely
from factories import ORIGIN, mirrored_scene, write_raster
from rasterio.transform import from_origin
from rasterio.warp import transform as warp_transform
from rasterio.windows import bounds as window_bounds

from slidemap.data.channels import InputSpec
from slidemap.errors import SlidemapError
from slidemap.infer import suggest as suggest_module
from slidemap.infer.options import PredictOptions
from slidemap.infer.predict import build_predictor
from slidemap.infer.suggest import binary_entropy, suggest_boxes, write_boxes
from slidemap.io.modelfile import PredictDefaults

BOX = 32


class BrightnessModel:
    """A stand-in model whose probability is the image's brightness / 255: the uncertainty of
    every box is known in advance."""

    spec = InputSpec(image_bands=(1,))
    threshold = 0.5

    def __init__(self) -> None:
        self.defaults = [PredictDefaults(tile=64, overlap=16)]  # the model file's windows
        self.shapes: list[tuple[int, ...]] = []  # of the windows the model was given

    def __call__(self, raw: list[np.ndarray], valid: list[np.ndarray]) -> list[np.ndarray]:
        self.shapes += [x.shape for x in raw]
        return [x[0] / 255.0 for x in raw]

    def facing(self, flips: tuple[bool, bool]) -> BrightnessModel:
        return self  # its scenes are stored north up


def box_bounds(row: int, col: int) -> tuple[float, float, float, float]:
    """Ground bounds of box (row, col) of the 1 m test grid."""
    west, north = ORIGIN[0] + col * BOX, ORIGIN[1] - row * BOX
    return west, north - BOX, west + BOX, north


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    """128×128 px, 4×4 boxes of 32 px: all sure (p = 0.02) but a coin toss at box (2, 1), a
    fairly unsure box beside it at (2, 2), a less unsure one far off at (0, 3); the last
    column of boxes is mostly nodata."""
    image = np.full((128, 128), 5, np.uint8)
    image[64:96, 32:64] = 128  # p 0.50
    image[64:96, 64:96] = 100  # p 0.39
    image[0:32, 96:128] = 60  # p 0.24
    image[32:128, 103:128] = 0  # nodata: boxes (1..3, 3) are 7/32 valid, under 25 %
    return write_raster(tmp_path / "scene.tif", image, nodata=0,
                        transform=from_origin(*ORIGIN, 1.0, 1.0))


def places(picks) -> list[tuple[int, int]]:
    return [(p.grid_row, p.grid_col) for p in picks]


def test_the_most_uncertain_box_comes_first_and_picks_spread_out(scene: Path) -> None:
    spread = suggest_boxes(BrightnessModel(), scene, None, n=3, box=BOX, spacing=1).picks
    assert places(spread) == [(2, 1), (0, 3), places(spread)[2]]
    assert spread[0].uncertainty == pytest.approx(float(binary_entropy(np.array(128 / 255))))
    assert all(max(abs(a.grid_row - b.grid_row), abs(a.grid_col - b.grid_col)) > 1
               for i, a in enumerate(spread) for b in spread[i + 1:])
    near = suggest_boxes(BrightnessModel(), scene, None, n=3, box=BOX, spacing=0).picks
    assert places(near) == [(2, 1), (2, 2), (0, 3)]  # no spacing: by score alone
    boxes = [shapely.box(*box_bounds(*p)) for p in places(near)]
    assert all(a.intersection(b).area == 0 for i, a in enumerate(boxes) for b in boxes[i + 1:])


class CoarseBrightnessModel(BrightnessModel):
    """The brightness model read at 3 m: three 1 m image px per working px."""

    spec = InputSpec(image_bands=(1,), resolution_m=3.0)


def test_valid_fractions_are_shares_of_the_box_whatever_the_working_grid(
        tmp_path: Path) -> None:
    """Boxes of 110 px read 3 px to 1 as 37 working px (111 image px): a fully valid box is
    still 1, an edge box clipped to 110 × 40 px is 40/110 of one, not 37²·9/110² or 13·37·9/…"""
    image = np.full((150, 220), 100, np.uint8)
    scene = write_raster(tmp_path / "scene.tif", image, nodata=0,
                         transform=from_origin(*ORIGIN, 1.0, 1.0))
    picks = suggest_boxes(CoarseBrightnessModel(), scene, None, n=4, box=110).picks
    fractions = {(p.grid_row, p.grid_col): p.valid_fraction for p in picks}
    assert fractions == pytest.approx({(0, 0): 1.0, (0, 1): 1.0,
                                       (1, 0): 40 / 110, (1, 1): 40 / 110})


def test_boxes_already_labelled_are_skipped(scene: Path, tmp_path: Path) -> None:
    labelled = tmp_path / "done.gpkg"
    pyogrio.raw.write(labelled, np.array([shapely.to_wkb(shapely.box(*box_bounds(2, 1)))],
                                         dtype=object), [], [], driver="GPKG",
                      geometry_type="Polygon", crs="EPSG:32647")
    result = suggest_boxes(BrightnessModel(), scene, None, n=2, box=BOX, spacing=0,
                           labels=[labelled])
    assert places(result.picks) == [(2, 2), (0, 3)]  # its neighbours touch it only: kept
    assert result.skipped_labelled == 1
    assert result.candidates == 16 - 1 - 3  # three boxes are mostly nodata


def test_a_box_labelled_in_another_crs_skips_itself_not_its_neighbours(
        scene: Path, tmp_path: Path) -> None:
    """The earlier box saved in WGS 84: its edges come back from the round trip a float error
    off, into the neighbours that touch it; a sliver that labels no pixel skips nothing."""
    corners = np.array(shapely.box(*box_bounds(2, 1)).exterior.coords)
    lon, lat = warp_transform("EPSG:32647", "EPSG:4326", corners[:, 0], corners[:, 1])
    labelled = tmp_path / "done.geojson"
    ring = shapely.Polygon(np.column_stack([lon, lat]))
    pyogrio.raw.write(labelled, np.array([shapely.to_wkb(ring)], dtype=object), [], [],
                      driver="GeoJSON", geometry_type="Polygon", crs="EPSG:4326")
    result = suggest_boxes(BrightnessModel(), scene, None, n=2, box=BOX, spacing=0,
                           labels=[labelled])
    assert result.skipped_labelled == 1
    assert places(result.picks) == [(2, 2), (0, 3)]


def test_boxes_are_written_ranked_in_the_scene_crs(scene: Path, tmp_path: Path) -> None:
    result = suggest_boxes(BrightnessModel(), scene, None, n=2, box=BOX)
    write_boxes(result, tmp_path / "boxes.gpkg")
    meta, _, wkb, fields = pyogrio.raw.read(tmp_path / "boxes.gpkg")
    assert "32647" in meta["crs"]
    assert list(fields[list(meta["fields"]).index("rank")]) == [1, 2]
    assert shapely.from_wkb(wkb[0]).equals(shapely.box(*box_bounds(2, 1)))


def test_suggest_cli_end_to_end(tiny_scene: dict, tiny_model: Path, tmp_path: Path,
                                run_cli) -> None:
    out = tmp_path / "boxes.gpkg"
    args = ["suggest", tiny_model, tiny_scene["image"], "--dem", tiny_scene["dem"], "--n", "4",
            "--box", "32", "--out", out, "--precision", "fp32"]
    code, err = run_cli(*args)
    assert code == 0, err
    _, _, wkb, _ = pyogrio.raw.read(out)
    boxes = shapely.from_wkb(wkb)
    assert len(boxes) == 4
    assert all(a.intersection(b).area == 0 for i, a in enumerate(boxes) for b in boxes[i + 1:])
    code, err = run_cli(*args)
    assert code != 0 and "exists" in err  # never replaced without --overwrite
    code, err = run_cli(*args[:-6], "--box", "32", "--n", "9", "--labels", out,
                        "--out", tmp_path / "next.gpkg")
    assert code == 0, err
    _, _, wkb, _ = pyogrio.raw.read(tmp_path / "next.gpkg")
    assert len(wkb) == 9 - 4  # the four boxes of the first round are skipped
    assert not any(shapely.from_wkb(w).intersection(b).area for w in wkb for b in boxes)


def test_a_box_too_small_for_the_model_is_refused(scene: Path) -> None:
    with pytest.raises(SlidemapError, match="too small"):
        suggest_boxes(BrightnessModel(), scene, None, n=1, box=16)


def test_a_box_larger_than_the_models_window_is_predicted_in_its_windows(tmp_path: Path
                                                                         ) -> None:
    """Each box went through the network whole (--box 4096: 5 GB, --box 16384 out of memory);
    it is now cut into the model's own windows (64 px overlapping by 16: 3 × 3 of them) and
    scored from their blended probabilities, which this pixel-wise model leaves as they were."""
    image = np.full((128, 128), 100, np.uint8)
    image[:, 64:] = 128
    scene = write_raster(tmp_path / "scene.tif", image, nodata=0,
                         transform=from_origin(*ORIGIN, 1.0, 1.0))
    model = BrightnessModel()
    [picked] = suggest_boxes(model, scene, None, n=1, box=128).picks
    assert model.shapes == [(1, 64, 64)] * 9
    expected = binary_entropy(np.array([100 / 255, 128 / 255])).mean()
    assert picked.uncertainty == pytest.approx(float(expected), abs=1e-6)


def huge_vrt(tmp_path: Path) -> Path:
    """A 1 000 000² px VRT of a kilobyte: a 64 px tile of brightness 100 at its corner."""
    tile = write_raster(tmp_path / "tile.tif", np.full((64, 64), 100, np.uint8), nodata=0,
                        transform=from_origin(*ORIGIN, 1.0, 1.0))
    vrt = tmp_path / "huge.vrt"
    vrt.write_text(
        '<VRTDataset rasterXSize="1000000" rasterYSize="1000000"><SRS>EPSG:32647</SRS>'
        f"<GeoTransform>{ORIGIN[0]}, 1, 0, {ORIGIN[1]}, 0, -1</GeoTransform>"
        '<VRTRasterBand dataType="Byte" band="1"><NoDataValue>0</NoDataValue><SimpleSource>'
        f'<SourceFilename relativeToVRT="0">{tile}</SourceFilename><SourceBand>1</SourceBand>'
        "</SimpleSource></VRTRasterBand></VRTDataset>")
    return vrt


def test_a_box_whose_own_arrays_exceed_the_budget_is_refused_before_it_is_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A box's channels, probabilities and entropies are held whole while it is scored: an
    8192 px box (the largest the old check let through) needs gigabytes; refused in one line
    naming --box before a box is read."""
    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("a box was read")

    monkeypatch.setattr(suggest_module, "read_inputs", never)
    with pytest.raises(SlidemapError, match=r"^--box 8192 holds 8192 × 8192 working px .* "
                       r"512 MB memory budget.* pass a smaller --box, or a larger --memory-mb$"):
        suggest_boxes(BrightnessModel(), huge_vrt(tmp_path), None, n=1, box=8192)
    larger = PredictOptions(memory_mb=8192)  # the budget --memory-mb sets is the one checked
    with pytest.raises(AssertionError, match="a box was read"):
        suggest_boxes(BrightnessModel(), huge_vrt(tmp_path), None, n=1, box=8192, options=larger)


def test_a_scene_of_too_many_boxes_is_refused_before_any_is_scored(tmp_path: Path) -> None:
    """A 1 000 000² px VRT of a kilobyte in 64 px boxes: the list of its 244 million boxes ran
    out of memory before one was read; their count is checked against the budget first."""
    with pytest.raises(SlidemapError, match=r"244,140,625 boxes of 64 px.* larger --box"):
        suggest_boxes(BrightnessModel(), huge_vrt(tmp_path), None, n=1, box=64)


def test_labelled_areas_off_the_scene_or_empty_are_refused(scene: Path, tmp_path: Path) -> None:
    """A --labels file that skips nothing (CRS set wrong, another place, no polygon) would
    suggest boxes that were labelled already without a word."""
    far = tmp_path / "far.gpkg"
    pyogrio.raw.write(far, np.array([shapely.to_wkb(shapely.box(0, 0, 10, 10))], dtype=object),
                      [], [], driver="GPKG", geometry_type="Polygon", crs="EPSG:32647")
    with pytest.raises(SlidemapError, match="does not overlap the image"):
        suggest_boxes(BrightnessModel(), scene, None, n=1, box=BOX, labels=[far])
    empty = tmp_path / "empty.gpkg"
    pyogrio.raw.write(empty, np.array([], dtype=object), [], [], driver="GPKG",
                      geometry_type="Polygon", crs="EPSG:32647")
    with pytest.raises(SlidemapError, match="holds no polygon"):
        suggest_boxes(BrightnessModel(), scene, None, n=1, box=BOX, labels=[empty])


def test_boxes_are_refused_a_file_name_that_is_no_vector_format(
        tiny_scene: dict, tiny_model: Path, tmp_path: Path, run_cli) -> None:
    code, err = run_cli("suggest", tiny_model, tiny_scene["image"], "--dem", tiny_scene["dem"],
                        "--box", "32", "--out", tmp_path / "new" / "boxes.txt")
    assert code == 2 and "GeoPackage (.gpkg)" in err and "Traceback" not in err  # usage, as
    assert not (tmp_path / "new").exists()  # report --out notes.txt


def test_a_scene_labelled_all_over_is_not_told_to_try_smaller_boxes(scene: Path,
                                                                   tmp_path: Path) -> None:
    """With every valid box in --labels, the error said "use a smaller --box", which finds
    nothing either; a smaller box helps only where boxes were left out as mostly nodata."""
    done = tmp_path / "done.gpkg"
    west, south, east, north = box_bounds(3, 0)[0], box_bounds(3, 0)[1], *box_bounds(0, 2)[2:]
    valid_boxes = shapely.union(shapely.box(west, south, east, north),  # all but mostly nodata
                                shapely.box(*box_bounds(0, 3)))
    pyogrio.raw.write(done, np.array([shapely.to_wkb(valid_boxes)], dtype=object), [], [],
                      driver="GPKG", geometry_type="Polygon", crs="EPSG:32647")
    with pytest.raises(SlidemapError, match=r"no box of .* the rest less than 25% valid"):
        suggest_boxes(BrightnessModel(), scene, None, n=1, box=BOX, labels=[done])
    everything = tmp_path / "everything.gpkg"
    pyogrio.raw.write(everything, np.array([shapely.to_wkb(shapely.box(
        west, south, box_bounds(0, 3)[2], north))], dtype=object), [], [], driver="GPKG",
        geometry_type="Polygon", crs="EPSG:32647")
    with pytest.raises(SlidemapError, match=r"every box .* lies in the areas of --labels \(16 "
                       r"boxes\): nothing is left to suggest") as refused:
        suggest_boxes(BrightnessModel(), scene, None, n=1, box=BOX, labels=[everything])
    assert "smaller --box" not in str(refused.value)


def test_a_south_up_scene_is_scored_as_its_north_up_copy(tiny_scene, tiny_model, tmp_path
                                                          ) -> None:
    """Each box of the same ground stored south up gets the score of the north-up box: the
    network sees it north up (it was scored upside down)."""
    south = mirrored_scene(tiny_scene, tmp_path / "south", (True, False))
    predictor = build_predictor([tiny_model], PredictOptions(precision="fp32"))
    scores = []
    for scene in (tiny_scene, south):
        picks = suggest_boxes(predictor, scene["image"], scene["dem"], 9, BOX).picks
        scores.append(sorted(round(p.score, 5) for p in picks))
    assert scores[0] == scores[1]


def test_a_south_up_scene_gets_the_boxes_of_its_north_up_copy(tiny_scene, tiny_model, tmp_path
                                                              ) -> None:
    """Boxes that do not divide the scene are laid from its north-west corner, as predict's
    windows are: stored south up and east to west, the same ground got other boxes (the
    clipped ones along its north and west edges) and so other picks."""
    mirrored = mirrored_scene(tiny_scene, tmp_path / "mirrored", (True, True))
    predictor = build_predictor([tiny_model], PredictOptions(precision="fp32"))
    found = []
    for scene in (tiny_scene, mirrored):
        suggestion = suggest_boxes(predictor, scene["image"], scene["dem"], 9, 40)
        transform = suggestion.profile["transform"]
        found.append(sorted((_ground(window_bounds(p.window, transform)), round(p.score, 5))
                            for p in suggestion.picks))
    assert found[0] == found[1]


def _ground(bounds: tuple[float, float, float, float]) -> tuple[float, ...]:
    """West, south, east, north of bounds taken on a grid of any orientation."""
    xs, ys = bounds[0::2], bounds[1::2]
    return tuple(round(v, 6) for v in (min(xs), min(ys), max(xs), max(ys)))
