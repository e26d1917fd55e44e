"""Video upscaler: the uint8 contract, chunked output equal to unchunked (no seams), an untrained
model equal to bicubic, clear one-line errors, save/load, and a short fit that beats bicubic."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from loong_dist.config import UpscalerConfig
from loong_dist.errors import ConfigError
from loong_dist.models.upscaler import UpscalerError, VideoUpscaler, load_upscaler, save_upscaler

TINY = UpscalerConfig(channels=8, blocks=1, hidden_channels=4)


def _trained_like(cfg=TINY, seed=0):
    """A model with every weight random (the residual head too, which starts at zero), so outputs
    depend on the neighbours and the carried state."""
    torch.manual_seed(seed)
    model = VideoUpscaler(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    return model.eval()


def _video(b, t, h, w, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (b, t, h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("b, t, h, w", [(1, 1, 8, 8), (2, 5, 16, 24), (1, 3, 40, 8)])
def test_shapes_and_dtype(b, t, h, w):
    up = _trained_like()
    out = up.upscale(_video(b, t, h, w))
    assert up.scale == 4
    assert out.shape == (b, t, 4 * h, 4 * w, 3) and out.dtype == torch.uint8 and out.device.type == "cpu"
    assert up.upscale(_video(b, t, h, w).numpy()).shape == out.shape  # numpy in


def test_untrained_model_is_bicubic():
    # The residual head starts at zero: the output is torch's bicubic interpolation, rounded.
    torch.manual_seed(0)
    up = VideoUpscaler(TINY).eval()
    video = _video(2, 4, 16, 16)
    x = video.permute(0, 1, 4, 2, 3).reshape(-1, 3, 16, 16).double()  # (b t, 3, h, w)
    ref = F.interpolate(x, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 255)
    ref = ref.reshape(2, 4, 3, 64, 64).permute(0, 1, 3, 4, 2)
    diff = (up.upscale(video).double() - ref).abs()
    assert float(diff.max()) <= 0.5 + 1e-3  # the float32 path rounds to the nearest level


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 7])
def test_chunked_equals_unchunked(chunk):
    up = _trained_like()
    video = _video(2, 11, 16, 16, seed=1)
    whole = up.upscale(video, chunk_frames=11)
    assert torch.equal(up.upscale(video, chunk_frames=chunk), whole)
    pieces = list(up.upscale_chunks(video, chunk))
    assert [p.shape[1] for p in pieces] == [min(chunk, 11 - s) for s in range(0, 11, chunk)]
    # the float outputs before rounding agree too (not merely after it)
    x = video.permute(0, 1, 4, 2, 3).float() / 255
    with torch.no_grad():
        full, _ = up.run(x, 0, 11, None)
        state, parts = None, []
        for s in range(0, 11, chunk):
            lo, hi = max(0, s - 1), min(11, s + chunk + 1)
            out, state = up.run(x[:, lo:hi], s, min(11, s + chunk), state, first=lo, total=11)
            parts += out
    assert all(torch.equal(a, b) for a, b in zip(parts, full))


def test_it_looks_at_neighbouring_frames():
    up = _trained_like()
    video = _video(1, 6, 16, 16, seed=2)
    out = up.upscale(video)
    for changed, affected in ((4, [3, 4, 5]), (0, [0, 1, 2, 3, 4, 5])):
        other = video.clone()
        other[:, changed] = 255 - other[:, changed]
        moved = [i for i in range(6) if not torch.equal(up.upscale(other)[:, i], out[:, i])]
        # frame t sees frame t+1 (look-ahead) and everything before it (carried state)
        assert moved == affected


@pytest.mark.parametrize("video, message", [
    (torch.zeros(1, 2, 12, 16, 3, dtype=torch.uint8), "height 12 is not a positive multiple of 8"),
    (torch.zeros(1, 2, 16, 20, 3, dtype=torch.uint8), "width 20 is not a positive multiple of 8"),
    (torch.zeros(1, 2, 16, 16, 3, dtype=torch.float32), "upscale takes uint8 (B, T, H, W, 3), got torch.float32"),
    (torch.zeros(2, 16, 16, 3, dtype=torch.uint8), "got torch.uint8 (2, 16, 16, 3)"),
    (torch.zeros(1, 0, 16, 16, 3, dtype=torch.uint8), "(1, 0, 16, 16, 3)"),
])
def test_bad_video_is_a_clear_error(video, message):
    with pytest.raises(UpscalerError) as e:
        VideoUpscaler(TINY).upscale(video)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_config_checks():
    with pytest.raises(ConfigError, match="upscaler.scale=2: only 4"):
        UpscalerConfig(scale=2)


def test_save_load_round_trip(tmp_path):
    up = _trained_like()
    path = save_upscaler(up, tmp_path / "up.safetensors", extra={"step": 3})
    again = load_upscaler(path)
    assert again.cfg == TINY and again.scale == 4 and not again.training
    video = _video(1, 3, 8, 16)
    assert torch.equal(again.upscale(video), up.upscale(video))


def test_bad_files_are_clear_errors(tmp_path):
    with pytest.raises(UpscalerError, match="nothing.safetensors: upscaler file not found"):
        load_upscaler(tmp_path / "nothing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(UpscalerError, match="not a readable safetensors file"):
        load_upscaler(tmp_path / "junk.safetensors")
    from loong_dist.config import TokenizerConfig
    from loong_dist.models.tokenizer import VideoTokenizer, save_tokenizer
    save_tokenizer(VideoTokenizer(TokenizerConfig(channels=8, num_res_blocks=0, decoder_res_blocks=0)),
                   tmp_path / "tok.safetensors")
    with pytest.raises(UpscalerError, match="no upscaler config in the file's metadata"):
        load_upscaler(tmp_path / "tok.safetensors")


def test_a_short_fit_beats_bicubic():
    # Smooth random textures (real 4x detail to recover) moving one pixel a frame: 60 Adam steps of
    # the tiny model must score above bicubic on a held-out draw, both from area-shrunk inputs.
    def clips(n, seed):
        g = torch.Generator().manual_seed(seed)
        base = F.interpolate(torch.rand(n, 3, 24, 24, generator=g), size=(96, 96), mode="bilinear",
                             align_corners=False)  # (n, 3, 96, 96)
        hr = torch.stack([base[..., t:t + 64, t:t + 64] for t in range(4)], dim=1)  # (n, 4, 3, 64, 64)
        lr = F.avg_pool2d(hr.flatten(0, 1), 4).view(n, 4, 3, 16, 16)
        return lr, hr

    torch.manual_seed(0)
    model = VideoUpscaler(UpscalerConfig(channels=16, blocks=1, hidden_channels=4))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for step in range(60):
        lr, hr = clips(4, step)
        loss = (model(lr) - hr).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    lr, hr = clips(8, 1000)
    with torch.no_grad():
        ours = F.mse_loss(model(lr), hr)
    ref = F.mse_loss(F.interpolate(lr.flatten(0, 1), scale_factor=4, mode="bicubic", align_corners=False),
                     hr.flatten(0, 1))
    assert float(ours) < 0.6 * float(ref)  # 0.29 when written
