"""The one key map for weight files saved before every model was encoder → decoder → head.

Where an architecture's parts used to sit elsewhere (the fusion network's two streams and their
fusion at the top level, U-Net++'s encoder attention beside its encoder, ...), the old state-dict
keys are renamed here, by prefix, when a file is read; a file saved since has the new keys and
passes through unchanged. Files of U-Net, ResUNet and the DA-U-Net family never changed.
"""

from __future__ import annotations

import re
from typing import TypeVar

Value = TypeVar("Value")

_UNETPP = (("attention.", "encoder.attention."),)
LEGACY_PREFIXES: dict[str, tuple[tuple[str, str], ...]] = {
    "fusion": (("optical.", "encoder.optical."), ("elevation.", "encoder.elevation."),
               ("fuse.", "encoder.fuse.")),
    "unetpp": _UNETPP,
    "unetpp_spatial": _UNETPP,
    "unetpp_contextual": _UNETPP,
    "unetpp_spatial_contextual": _UNETPP,
    "fcn": (("head.", "decoder."),),
    "pspnet": (("pyramid.", "decoder."),),
    "deeplabv3plus": (("aspp.", "decoder.aspp."),),
    "segformer": (("stages.", "encoder.stages."),),
}
_MEMBER = re.compile(r"members\.\d+\.")  # an ensemble's member prefix, kept as it is


def current_key(architecture: str, key: str) -> str:
    """``key`` of a weight file of ``architecture`` as today's model names it."""
    member = _MEMBER.match(key)
    prefix = member.group(0) if member else ""
    rest = key[len(prefix):]
    for old, new in LEGACY_PREFIXES.get(architecture, ()):
        if rest.startswith(old):
            return prefix + new + rest[len(old):]
    return key


def current_keys(architecture: str, state: dict[str, Value]) -> dict[str, Value]:
    """``state`` (tensors, or shapes read from a header) with every key :func:`current_key`."""
    return {current_key(architecture, key): value for key, value in state.items()}
