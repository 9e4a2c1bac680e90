"""Optional extras: a feature whose package is not installed names the extra on one line."""

from __future__ import annotations

import sys

import pytest

from slidemap import api
from slidemap.errors import SlidemapError
from slidemap.infer.predict import PredictOptions


def test_hdf5_patches_without_h5py_name_the_extra(monkeypatch, tmp_path) -> None:
    from slidemap.data.l4s import L4SDataset

    (tmp_path / "image_1.h5").write_bytes(b"\x89HDF\r\n\x1a\n")
    monkeypatch.setitem(sys.modules, "h5py", None)  # import h5py now raises ImportError
    with pytest.raises(SlidemapError, match=r"slidemap\[hdf5\]") as caught:
        L4SDataset(tmp_path)[0]
    assert "\n" not in str(caught.value)


def test_onnx_backend_without_onnxruntime_names_the_extra(monkeypatch, tiny_scene, tiny_model,
                                                          tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(SlidemapError, match=r"--backend onnx needs .*slidemap\[onnx\]"):
        api.predict(tiny_scene["image"], tmp_path / "out", tiny_scene["dem"], tiny_model,
                    PredictOptions(tile=48, overlap=16, backend="onnx"))


def test_dask_workers_without_distributed_name_the_extra(monkeypatch, tiny_scene, tiny_model,
                                                         tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(SlidemapError, match=r"slidemap\[dask\]"):
        api.predict(tiny_scene["image"], tmp_path / "out", tiny_scene["dem"], tiny_model,
                    PredictOptions(tile=48, overlap=16, workers=1))
