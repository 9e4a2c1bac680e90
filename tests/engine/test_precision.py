"""``auto`` precision: bf16 only where the CPU computes in it (emulated bf16 is ~11× slower)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slidemap.infer import runtime
from slidemap.infer.backends import TorchBackend
from slidemap.infer.runtime import autocast, resolve_precision


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_follows_the_cpu(monkeypatch: pytest.MonkeyPatch, native: bool,
                              expected: str) -> None:
    monkeypatch.setattr(runtime, "native_bf16", lambda: native)
    assert resolve_precision("auto") == expected
    assert TorchBackend(torch.nn.Conv2d(3, 1, 1), "auto").precision == expected
    with autocast("auto"):
        assert torch.is_autocast_enabled("cpu") is (expected == "bf16")


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_an_explicit_precision_is_kept_whatever_the_cpu(monkeypatch: pytest.MonkeyPatch,
                                                        precision: str) -> None:
    for native in (True, False):
        monkeypatch.setattr(runtime, "native_bf16", lambda native=native: native)
        assert resolve_precision(precision) == precision


def test_auto_on_a_cpu_without_bf16_gives_the_fp32_probabilities(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "native_bf16", lambda: False)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(4, 1, 1))
    batch = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)
    auto = TorchBackend(model, "auto")(batch)
    np.testing.assert_array_equal(auto, TorchBackend(model, "fp32")(batch))
    assert not np.array_equal(auto, TorchBackend(model, "bf16")(batch))


def test_an_unknown_precision_is_refused() -> None:
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp16")
