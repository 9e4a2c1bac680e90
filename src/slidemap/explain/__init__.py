"""Why the model says landslide: Grad-CAM, attention maps, and pictures of them."""

from slidemap.explain.attention import AttentionMaps, collect_attention, collect_attention_maps
from slidemap.explain.gradcam import GradCamResult, default_target_layer, grad_cam
from slidemap.explain.overlay import rgb_preview, save_heat_geotiff, save_overlay_png

__all__ = [
    "AttentionMaps",
    "GradCamResult",
    "collect_attention",
    "collect_attention_maps",
    "default_target_layer",
    "grad_cam",
    "rgb_preview",
    "save_heat_geotiff",
    "save_overlay_png",
]
