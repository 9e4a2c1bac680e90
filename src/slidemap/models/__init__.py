"""Segmentation networks, each an encoder → decoder → head (:mod:`slidemap.models.base`), built
by name from a registry.

Importing this package imports every architecture module so that each registers itself.
"""

from slidemap.models import (  # noqa: F401  (registers architectures)
    da_unet,
    deeplabv3plus,
    fcn,
    fusion,
    pspnet,
    resunet,
    segformer,
    unet,
    unetpp,
)
from slidemap.models.base import AnySizeModel, Decoder, Encoder, SegmentationModel
from slidemap.models.ensemble import Network, ProbabilityAverage, build_network, count_members
from slidemap.models.registry import (
    build_model,
    count_parameters,
    list_models,
    register,
    resolved_options,
)
from slidemap.models.summary import model_table

__all__ = ["AnySizeModel", "Decoder", "Encoder", "Network", "ProbabilityAverage",
           "SegmentationModel", "build_model", "build_network", "count_members",
           "count_parameters", "list_models", "model_table", "register", "resolved_options"]
