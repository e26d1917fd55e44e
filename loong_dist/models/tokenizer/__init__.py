"""Video tokenizer: causal 3D CNN encoder/decoder with an FSQ codebook (see model.py).

    from loong_dist.models.tokenizer import load_tokenizer
    tok = load_tokenizer("tokenizer.safetensors")
    ids = tok.encode(video_uint8)    # (B, 1+4k, H, W, 3) -> (B, 1+k, H/8, W/8) int64
"""

from loong_dist.models.tokenizer.checkpoint import load_tokenizer, save_tokenizer
from loong_dist.models.tokenizer.model import Decoder, Encoder, TokenizerError, VideoTokenizer
from loong_dist.models.tokenizer.quantizer import FSQ, bound_penalty, code_usage

__all__ = ["FSQ", "Decoder", "Encoder", "TokenizerError", "VideoTokenizer", "bound_penalty", "code_usage",
           "load_tokenizer", "save_tokenizer"]
