"""Shared fixtures: tiny georeferenced scenes and model files written per test."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from factories import tiny_bundle, write_scene

from slidemap.io.modelfile import save_model

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

@pytest.fixture
def tiny_scene(tmp_path: Path) -> dict[str, Path]:
    """A 96×96 RGB scene with a bright 'landslide' square, a tilted DSM and labels.

    The left 8 columns are nodata (0 in the image, NaN in the DSM, 255 in the labels).
    """
    rng = np.random.default_rng(0)
    image = rng.integers(40, 90, size=(3, 96, 96)).astype(np.uint8)
    labels = np.zeros((96, 96), dtype=np.uint8)
    labels[30:70, 40:80] = 1
    image[:, 30:70, 40:80] += 100
    image[:, :, :8] = 0
    labels[:, :8] = 255
    rows, cols = np.mgrid[0:96, 0:96]
    dsm = (3000.0 + 0.25 * cols + 0.1 * rows).astype(np.float32)
    dsm[:, :8] = np.nan
    return write_scene(tmp_path, "scene", image, dsm, labels)


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    """An untrained width-4 U-Net on RGB + slope at native resolution, saved as a model file."""
    bundle = tiny_bundle(mean=[60.0, 60.0, 60.0, 10.0], std=[30.0, 30.0, 30.0, 5.0])
    return save_model(bundle, tmp_path / "models" / "tiny")


@pytest.fixture
def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
            ) -> Callable[..., tuple[int, str]]:
    """Run the real ``slidemap`` entry point in-process; returns (exit code, stderr).

    In-process because a subprocess would re-import torch for every call.
    """
    from slidemap import cli

    def run(*args: object) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", ["slidemap", *map(str, args)])
        code = 0
        try:
            cli.main()
        except SystemExit as exc:
            code = int(exc.code or 0)
        return code, capsys.readouterr().err

    return run


@pytest.fixture
def ctrl_c() -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt, as in a terminal, for the test's length: a process
    started in the background by a non-interactive shell (a CI runner's ``cmd &``) inherits
    SIGINT ignored, and the tests that send it saw nothing happen."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
