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


@pytest.mark.parametrize("bf16", [False, True])
def test_untrained_model_is_bicubic(bf16):
    # The linear base starts as bicubic and the residual head at zero: the output is torch's bicubic
    # interpolation, rounded, edges included. Under bf16 autocast too: the base runs in float32.
    torch.manual_seed(0)
    up = VideoUpscaler(TINY).eval()
    video = _video(2, 4, 16, 24)
    x = video.permute(0, 1, 4, 2, 3).reshape(-1, 3, 16, 24).double()  # (b t, 3, h, w)
    ref = F.interpolate(x, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 255)
    ref = ref.reshape(2, 4, 3, 64, 96).permute(0, 1, 3, 4, 2)
    diff = (up.upscale(video, bf16=bf16).double() - ref).abs()
    assert float(diff.max()) <= 0.5 + 1e-3  # the float32 path rounds to the nearest level


def test_linear_base_fit_recovers_a_linear_upsampler():
    # Targets made by a known 5 x 5 conv + pixel shuffle (torch's conv, not the fit's unfold): the fit
    # finds its weights, and the model with a zero residual reproduces the targets. Two sets of
    # targets for the same frames, weighted 1 and 3, give the weighted mean of their filters.
    gen = torch.Generator().manual_seed(0)
    frames = torch.rand(6, 3, 12, 16, generator=gen, dtype=torch.float64)

    def upsampled(weight, bias):
        return F.pixel_shuffle(F.conv2d(F.pad(frames, (2, 2, 2, 2), mode="replicate"), weight, bias), 4)

    w1, w2 = torch.randn(2, 48, 3, 5, 5, generator=gen, dtype=torch.float64) * 0.1
    b1, b2 = torch.randn(2, 48, generator=gen, dtype=torch.float64) * 0.1
    up = VideoUpscaler(TINY)
    up.fit_linear_base([(frames.float(), upsampled(w1, b1).float(), 1.0)])
    torch.testing.assert_close(up.base_weight.double(), w1, atol=1e-4, rtol=0)
    torch.testing.assert_close(up.base_bias.double(), b1, atol=1e-4, rtol=0)
    with torch.no_grad():
        out = up(frames.float()[None])[0]  # the residual head is still zero
    torch.testing.assert_close(out.double(), upsampled(w1, b1), atol=1e-4, rtol=0)
    kinds = ((w1, b1, 1.0), (w2, b2, 3.0))
    up.fit_linear_base([(frames.float(), upsampled(w, b).float(), weight) for w, b, weight in kinds])
    torch.testing.assert_close(up.base_weight.double(), (w1 + 3 * w2) / 4, atol=1e-4, rtol=0)
    saved = up.base_weight.clone()
    up.fit_linear_base([])  # no pixels: the base stays
    assert torch.equal(up.base_weight, saved)


def test_fed_back_output_is_bounded():
    # However large the residual, the output folded back into the next step is clamped to [0, 1].
    up = _trained_like()
    with torch.no_grad():
        up.to_residual.bias.fill_(100.0)
        x = torch.from_numpy(np.random.default_rng(3).random((1, 4, 3, 8, 8), dtype=np.float32))
        out, (hidden, last) = up.run(x, 0, 4, None)
    assert float(out[-1].min()) > 50  # the output itself is not clamped (training sees the raw residual)
    assert float(last.min()) >= -0.5 and float(last.max()) <= 0.5 and float(hidden.abs().max()) <= 1


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
