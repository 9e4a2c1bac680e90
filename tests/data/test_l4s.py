"""Landslide4Sense HDF5 readers, on tiny fixtures written in the release's format."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from slidemap.data import sources
from slidemap.data.channels import InputSpec
from slidemap.data.l4s import L4SDataset
from slidemap.data.scene import Scene
from slidemap.data.sources import is_l4s_folder, load_patch_arrays, open_patch_set
from slidemap.errors import SlidemapError
from slidemap.schema.config import PatchSource
from slidemap.schema.values import BAND_NAMES

RNG = np.random.default_rng(0)


def patch(seed: int, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """An (H, W, 14) float image whose channel k holds k + seed everywhere, and a 0/1 mask."""
    img = np.broadcast_to(np.arange(14, dtype=np.float32) + seed, (size, size, 14)).copy()
    mask = (RNG.random((size, size)) > 0.8).astype(np.uint8)
    return img, mask


def write_release(root: Path, numbers: list[int], masks: bool = True) -> dict[int, tuple]:
    """The L4S layout: img/image_N.h5 with 'img', mask/mask_N.h5 with 'mask'."""
    (root / "img").mkdir(parents=True)
    if masks:
        (root / "mask").mkdir()
    data = {}
    for n in numbers:
        img, mask = patch(n)
        with h5py.File(root / "img" / f"image_{n}.h5", "w") as f:
            f["img"] = img
        if masks:
            with h5py.File(root / "mask" / f"mask_{n}.h5", "w") as f:
                f["mask"] = mask
        data[n] = (img, mask)
    return data


def test_release_layout_selects_bands_by_name(tmp_path: Path) -> None:
    data = write_release(tmp_path, [10, 2, 1])
    ds = L4SDataset(tmp_path, bands=["b8", "B2", "DEM", "slope"])

    assert ds.names == ["image_1", "image_2", "image_10"]  # numeric order
    assert ds.labelled and len(ds) == 3
    sample = ds[2]
    img, mask = data[10]
    assert sample["image"].shape == (2, 16, 16) and sample["image"].dtype == np.float32
    np.testing.assert_array_equal(sample["image"][0], img[..., 7])  # B8 is channel 8
    np.testing.assert_array_equal(sample["image"][1], img[..., 1])
    np.testing.assert_array_equal(sample["slope"][0], img[..., 12])
    np.testing.assert_array_equal(sample["dem"][0], img[..., 13])
    assert sample["dem"].shape == (1, 16, 16)
    np.testing.assert_array_equal(sample["mask"], mask)
    assert sample["valid"].all()


def test_default_bands_and_optical_only(tmp_path: Path) -> None:
    write_release(tmp_path, [1])
    sample = L4SDataset(tmp_path)[0]
    assert sample["image"].shape == (4, 16, 16)
    assert {"slope", "dem"} <= sample.keys()
    optical = L4SDataset(tmp_path, bands=["B4", "B3", "B2"])[0]
    assert "slope" not in optical and "dem" not in optical
    np.testing.assert_array_equal(optical["image"][:, 0, 0], [1 + 3, 1 + 2, 1 + 1])


def test_unknown_band_lists_valid_names(tmp_path: Path) -> None:
    write_release(tmp_path, [1])
    with pytest.raises(SlidemapError, match="unknown Landslide4Sense band 'B8A'") as info:
        L4SDataset(tmp_path, bands=["B2", "B8A"])
    assert all(name in str(info.value) for name in BAND_NAMES)
    with pytest.raises(SlidemapError, match="no optical band"):
        L4SDataset(tmp_path, bands=["dem"])


def test_nan_becomes_ignore(tmp_path: Path) -> None:
    img, mask = patch(0)
    img[3, 4, 1] = np.nan  # B2
    img[5, 6, 0] = np.nan  # B1, not selected: harmless
    with h5py.File(tmp_path / "one.h5", "w") as f:
        f["img"] = img
        f["mask"] = mask
    sample = L4SDataset(tmp_path, bands=["B2", "B3"])[0]
    assert sample["mask"][3, 4] == 255 and not sample["valid"][3, 4]
    assert sample["valid"].sum() == 16 * 16 - 1


def test_single_file_layout_unlabelled_and_labelled(tmp_path: Path) -> None:
    for n in range(3):
        img, mask = patch(n)
        with h5py.File(tmp_path / f"patch_{n}.h5", "w") as f:
            f["img"] = img
    ds = L4SDataset(tmp_path)
    assert len(ds) == 3 and not ds.labelled and "mask" not in ds[0]

    with h5py.File(tmp_path / "patch_0.h5", "a") as f:
        f["mask"] = mask
    with pytest.raises(SlidemapError, match=r"patch_1\.h5 has no 'mask'"):
        L4SDataset(tmp_path)


def test_release_without_mask_folder_is_unlabelled(tmp_path: Path) -> None:
    write_release(tmp_path, [1, 2], masks=False)
    ds = L4SDataset(tmp_path)
    assert not ds.labelled and "mask" not in ds[1]


def test_missing_mask_file_and_wrong_shape_are_errors(tmp_path: Path) -> None:
    write_release(tmp_path / "a", [1, 2])
    (tmp_path / "a" / "mask" / "mask_2.h5").unlink()
    with pytest.raises(SlidemapError, match=r"image_2.h5 has no mask .*mask_2.h5"):
        L4SDataset(tmp_path / "a")

    (tmp_path / "b").mkdir()
    with h5py.File(tmp_path / "b" / "x.h5", "w") as f:
        f["img"] = np.zeros((16, 16, 12), np.float32)
    with pytest.raises(SlidemapError, match=r"expected \(H, W, 14\)"):
        L4SDataset(tmp_path / "b")[0]


def test_bad_mask_values_name_the_file(tmp_path: Path) -> None:
    write_release(tmp_path, [1])
    with h5py.File(tmp_path / "mask" / "mask_1.h5", "w") as f:
        f["mask"] = np.full((16, 16), 3, np.uint8)
    with pytest.raises(SlidemapError, match=r"mask_1.h5 has values \{3\}"):
        L4SDataset(tmp_path)[0]


def test_folder_without_h5_files_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SlidemapError, match=r"has no \.h5 files"):
        L4SDataset(tmp_path)


def test_group_or_oversized_array_is_a_one_line_error(tmp_path: Path) -> None:
    """A group where the array should be, and an array declared scene-sized, are refused by
    their shape, before anything is read (a traceback and a memory failure before)."""
    write_release(tmp_path, [1, 2])
    with h5py.File(tmp_path / "img" / "image_1.h5", "w") as f:
        f.create_group("img")
    with pytest.raises(SlidemapError, match=r"'img' in .*image_1.h5 is an HDF5 group"):
        L4SDataset(tmp_path)[0]
    with h5py.File(tmp_path / "img" / "image_2.h5", "w") as f:  # 60 TB if it were read
        f.create_dataset("img", shape=(2**20, 2**20, 14), dtype="f4", chunks=(128, 128, 14))
    with pytest.raises(SlidemapError, match=r"is 1048576×1048576 px: a patch may be at most"):
        L4SDataset(tmp_path)[1]


def test_mask_shape_is_checked_before_it_is_read(tmp_path: Path) -> None:
    write_release(tmp_path, [1])
    with h5py.File(tmp_path / "mask" / "mask_1.h5", "w") as f:
        f.create_dataset("mask", shape=(2**20, 2**20), dtype="u1", chunks=(128, 128))
    with pytest.raises(SlidemapError, match=r"has shape \(1048576, 1048576\) but the image"):
        L4SDataset(tmp_path)[0]


def test_hidden_files_are_skipped_and_a_name_is_one_file(tmp_path: Path) -> None:
    """macOS's ``._image_1.h5`` beside each copied file is not a patch; ``image_2.h5`` beside
    ``image_2.hdf5`` would write both patches' maps to ``image_2_prob.tif``: refused."""
    write_release(tmp_path, [1, 2])
    (tmp_path / "img" / "._image_1.h5").write_bytes(b"\x00\x05\x16\x07" + bytes(60))
    (tmp_path / "mask" / "._mask_1.h5").write_bytes(b"\x00\x05\x16\x07" + bytes(60))
    assert L4SDataset(tmp_path).names == ["image_1", "image_2"]

    (tmp_path / "img" / "image_2.hdf5").write_bytes((tmp_path / "img" / "image_1.h5").read_bytes())
    with pytest.raises(SlidemapError, match=r"has both image_2.h5 and image_2.hdf5"):
        L4SDataset(tmp_path)


@pytest.mark.parametrize("suffix", [".hdf5", ".H5"])
def test_any_file_the_reader_takes_marks_a_split(tmp_path: Path, suffix: str) -> None:
    """``predict FOLDER`` decides by :func:`is_l4s_folder` whether it holds patches or a
    Landslide4Sense split: one ``.h5`` per patch as ``.hdf5`` or ``.H5`` was read as a patch
    folder and refused for having no ``images/``."""
    img, mask = patch(0)
    with h5py.File(tmp_path / f"p_1{suffix}", "w") as f:
        f["img"], f["mask"] = img, mask
    (tmp_path / "._p_1.h5").write_bytes(bytes(8))
    assert is_l4s_folder(tmp_path)
    assert isinstance(open_patch_set(tmp_path, InputSpec(image_bands=(2, 3, 4))), L4SDataset)
    assert not is_l4s_folder(tmp_path / "missing")


def test_an_array_within_the_side_but_too_many_bytes_is_refused_before_it_is_read(
        tmp_path: Path) -> None:
    """8192 px a side passed the side check, but 14 float64 bands of it are 7 GB: a file of a
    kilobyte ran out of memory after allocating."""
    write_release(tmp_path, [1])
    with h5py.File(tmp_path / "img" / "image_1.h5", "w") as f:
        f.create_dataset("img", shape=(8192, 8192, 14), dtype="f8", chunks=(128, 128, 14))
    with pytest.raises(SlidemapError, match=r"8,192 × 8,192 px with 14 band\(s\), 7,168 MB"):
        L4SDataset(tmp_path)[0]


def test_a_pixel_size_for_a_split_is_refused_not_ignored(tmp_path: Path) -> None:
    """predict --pixel-size on a split was accepted and ignored: its slope is in the files."""
    write_release(tmp_path, [1])
    spec = InputSpec(image_bands=(2, 3, 4), slope=True)
    with pytest.raises(SlidemapError, match=r"carry their slope: a pixel size \(10 m"):
        open_patch_set(tmp_path, spec, pixel_size=10.0)
    assert isinstance(open_patch_set(tmp_path, spec), L4SDataset)


@pytest.mark.parametrize(("key", "array", "message"), [
    ("img", np.full((16, 16, 14), b"a", dtype="S1"), r"'img' in .* holds \|S1 values"),
    ("img", np.ones((16, 16, 14), np.complex64), "'img' in .* holds complex64 values"),
    ("img", np.zeros((0, 0, 14), np.float32), r"has shape \(0, 0, 14\)"),
    ("mask", np.full((16, 16), b"1", dtype="S1"), r"'mask' in .* holds \|S1 values"),
])
def test_text_complex_or_empty_arrays_are_one_line_errors(tmp_path: Path, key: str,
                                                          array: np.ndarray,
                                                          message: str) -> None:
    """Text was a ValueError traceback, complex values lost their imaginary part with only a
    ComplexWarning, and a 0 × 0 image an IndexError traceback."""
    write_release(tmp_path, [1], masks=key == "mask")
    folder = "img" if key == "img" else "mask"
    with h5py.File(tmp_path / folder / f"{'image' if key == 'img' else 'mask'}_1.h5", "w") as f:
        f[key] = array
    with pytest.raises(SlidemapError, match=message):
        L4SDataset(tmp_path)[0]


def damage(path: Path, where: str) -> None:
    """Flip 16 bytes of the file's compressed 'img' chunk or of the object header that
    describes it, found by h5py itself, so the file still opens."""
    with h5py.File(path, "r") as f:
        node = f["img"]
        offset = (node.id.get_chunk_info(0).byte_offset if where == "chunk"
                  else h5py.h5o.get_info(node.id).addr + 20)
    data = bytearray(path.read_bytes())
    data[offset:offset + 16] = bytes(b ^ 0xFF for b in data[offset:offset + 16])
    path.write_bytes(data)


@pytest.mark.parametrize("where", ["chunk", "header"])
def test_a_damaged_file_is_a_one_line_error_naming_it(tmp_path: Path, where: str) -> None:
    """A file that opens but fails while read was an OSError line without its name (a damaged
    chunk) or a KeyError traceback (a damaged object header): which of thousands of patches
    was bad could not be told."""
    write_release(tmp_path, [1, 2], masks=False)
    path = tmp_path / "img" / "image_2.h5"
    img, _ = patch(2)
    with h5py.File(path, "w") as f:
        f.create_dataset("img", data=img, compression="gzip", chunks=img.shape)
    damage(path, where)
    dataset = L4SDataset(tmp_path)
    assert dataset[0]["image"].shape == (4, 16, 16)
    with pytest.raises(SlidemapError, match=r"image_2.h5 cannot be read as HDF5 \(.+\): is the"):
        dataset[1]


def test_a_set_beyond_memory_is_refused_after_its_first_patch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Training holds a patch set whole at inputs.scale: a split beyond the machine's memory
    was read to the end and failed as "out of memory: pass a smaller scene"."""
    write_release(tmp_path, [1, 2, 3, 4])
    spec = InputSpec(image_bands=(2, 3, 4), scale=4.0)  # 64² px, 3 channels: 48 KiB a patch
    source = PatchSource("l4s", tmp_path)
    assert len(load_patch_arrays(source, spec)) == 4
    read = []
    getitem = L4SDataset.__getitem__
    monkeypatch.setattr(L4SDataset, "__getitem__",
                        lambda self, index: read.append(index) or getitem(self, index))
    monkeypatch.setattr(sources, "physical_memory_mb", lambda: 0.15,  # 150 KiB: 3 patches
                        raising=False)
    with pytest.raises(SlidemapError, match=r"its 4 patches at scale 4 \(image_1: 64 × 64 px, "
                       r"3 channel\(s\)\) take about 0.0 GB, more than the .* GB this "
                       r"process may use"):
        load_patch_arrays(source, spec)
    assert read == [0]


@pytest.mark.parametrize("name", ["{root}/img/image_1.h5", 'HDF5:"{root}/img/image_1.h5"://img'])
def test_one_patch_passed_as_a_scene_says_to_pass_its_split(tmp_path: Path, name: str) -> None:
    """GDAL reads a patch's (H, W, 14) img as H bands 14 px wide: predict refused it as lacking
    a CRS, as too small or as needing a DEM, and never said that the split folder is read."""
    root = tmp_path / "split"
    write_release(root, [1])
    with pytest.raises(SlidemapError, match=f"one Landslide4Sense patch, not a scene .*: pass "
                                            f"its split folder {root} to predict"):
        Scene(name.format(root=root))
    single = tmp_path / "single"
    single.mkdir()
    with h5py.File(single / "patch_0.h5", "w") as f:
        f["img"] = patch(0)[0]
    with pytest.raises(SlidemapError, match=f"pass its split folder {single} to predict"):
        Scene(single / "patch_0.h5")


def test_an_hdf5_raster_other_than_a_patch_is_left_to_gdal(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "scene.h5", "w") as f:
        f["img"] = np.zeros((3, 16, 16), np.float32)  # bands first, as a scene's
    with pytest.raises(SlidemapError) as caught:
        Scene(f'HDF5:"{tmp_path / "scene.h5"}"://img')
    assert "Landslide4Sense" not in str(caught.value)
