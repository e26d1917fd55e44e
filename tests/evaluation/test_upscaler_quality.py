"""evaluate_pairs' account of the tokenizer's share of the error, on pairs whose answer is known
without the code under test: a tokenizer that adds 2 levels to every pixel, and an upscaler that
returns the real frames exactly from clean input."""

import numpy as np
import torch

from loong_dist.evaluation.upscaler_quality import bicubic_upscale, evaluate_pairs


class TruthFromClean:
    """Upscales the clean input to the real frames exactly, anything else by bicubic."""

    training = False

    def __init__(self, clean: np.ndarray, hr: np.ndarray):
        self.clean, self.hr = clean, hr

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    def upscale(self, video: torch.Tensor, chunk_frames: int) -> torch.Tensor:
        x = video[0].numpy()
        return torch.from_numpy(self.hr if np.array_equal(x, self.clean) else bicubic_upscale(x))[None]


def test_clean_correction_on_an_offset_tokenizer():
    g = np.random.default_rng(0)
    hr = g.integers(40, 216, (3, 32, 32, 3)).astype(np.uint8)
    clean = hr.reshape(3, 8, 4, 8, 4, 3).mean(axis=(2, 4)).round().astype(np.uint8)  # the 4x area shrink
    tok = clean + 2  # a tokenizer that brightens every pixel by 2 levels, nothing else
    pair = {"hr": hr, "clean": clean, "tok": tok, "video": "v.mp4", "source": "v", "start": 0.0, "size": 32}
    result = evaluate_pairs(TruthFromClean(clean, hr), [pair])
    offset_db = 20 * np.log10(255 / 2)
    assert np.isinf(result["clean"]["psnr"])
    r = result["tokenizer"]
    assert r["psnr"] == r["bicubic_psnr"]  # bicubic both: the stub knows only the clean input
    assert abs(r["input_psnr"] - offset_db) < 1e-9
    # bicubic keeps a constant offset, so bicubic(tok) + (hr - bicubic(clean)) is hr + 2 exactly
    assert abs(r["clean_correction_psnr"] - offset_db) < 1e-9
    assert abs(r["clean_correction_gain"] - (offset_db - r["bicubic_psnr"])) < 1e-9
    assert result["by_size"]["32"]["tokenizer"]["clean_correction_gain"] == r["clean_correction_gain"]
    assert "input_psnr" not in result["clean"]
