"""Video upscaler: 4x spatial super-resolution over neighbouring frames (see model.py).

    from loong_dist.models.upscaler import load_upscaler
    up = load_upscaler("upscaler.safetensors")
    hr = up.upscale(video_uint8)    # (B, T, H, W, 3) -> (B, T, 4H, 4W, 3), H and W multiples of 8
"""

from loong_dist.models.upscaler.checkpoint import load_upscaler, save_upscaler, upscaler_extra
from loong_dist.models.upscaler.model import UpscalerError, VideoUpscaler, bicubic

__all__ = ["UpscalerError", "VideoUpscaler", "bicubic", "load_upscaler", "save_upscaler", "upscaler_extra"]
