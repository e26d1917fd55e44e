"""Video tokenizer: API shapes, clear errors, exact causality (prefix ids against the full clip),
FSQ id <-> code round trip, save/load, and a short overfit that must lower the loss."""

import math

import numpy as np
import pytest
import torch

from loong_dist.config import TokenizerConfig
from loong_dist.errors import ConfigError
from loong_dist.models.tokenizer import (FSQ, TokenizerError, VideoTokenizer, bound_penalty, code_usage,
                                         load_tokenizer, save_tokenizer)

TINY = TokenizerConfig(channels=8, channel_mult=[1, 2, 2], num_res_blocks=1, decoder_res_blocks=1)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return VideoTokenizer(TINY).eval()


def _video(b, t, h, w, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (b, t, h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("t, size", [(1, 64), (5, 64), (17, 64), (17, 128)])
def test_shapes(tiny, t, size):
    ids = tiny.encode(_video(2, t, size, size))
    k = (t - 1) // 4
    assert ids.shape == (2, 1 + k, size // 8, size // 8) and ids.dtype == torch.int64
    assert tiny.latent_shape(t, size, size) == (1 + k, size // 8, size // 8)
    assert 0 <= int(ids.min()) and int(ids.max()) < tiny.codebook_size == 64_000
    video = tiny.decode(ids)
    assert video.shape == (2, t, size, size, 3) and video.dtype == torch.uint8


def test_loong_shape_and_numpy_input(tiny):
    assert tiny.latent_shape(17, 128, 128) == (5, 16, 16)  # 1,280 tokens, as in the paper
    assert tiny.latent_shape(65, 128, 128) == (17, 16, 16)
    ids = tiny.encode(_video(1, 5, 64, 96).numpy())  # numpy in, non-square
    assert ids.shape == (1, 2, 8, 12)
    assert tiny.decode(ids.numpy()).shape == (1, 5, 64, 96, 3)


@pytest.mark.parametrize("shape, message", [
    ((1, 16, 64, 64, 3), "T=16 frames is not 1 + 4k"),
    ((1, 0, 64, 64, 3), "T=0 frames"),
    ((1, 5, 100, 64, 3), "height 100 is not a positive multiple of 8"),
    ((1, 5, 64, 100, 3), "width 100 is not a positive multiple of 8"),
    ((5, 64, 64, 3), "encode takes uint8 (B, T, H, W, 3)"),
])
def test_wrong_video_is_a_clear_error(tiny, shape, message):
    with pytest.raises(TokenizerError) as e:
        tiny.encode(torch.zeros(shape, dtype=torch.uint8))
    assert message in str(e.value)
    with pytest.raises(ValueError):  # TokenizerError is also a ValueError
        tiny.latent_shape(16, 64, 64)


def test_wrong_dtype_and_ids(tiny):
    with pytest.raises(TokenizerError, match="uint8"):
        tiny.encode(torch.zeros((1, 5, 64, 64, 3), dtype=torch.float32))
    with pytest.raises(TokenizerError, match="id 64000 is outside"):
        tiny.decode(torch.full((1, 2, 8, 8), 64_000))
    with pytest.raises(TokenizerError, match="id -1 is outside"):
        tiny.decode(torch.full((1, 2, 8, 8), -1))
    with pytest.raises(TokenizerError, match="integer ids"):
        tiny.decode(torch.zeros((1, 2, 8, 8)))


@pytest.mark.parametrize("bf16", [False, True])
def test_causality_is_exact(bf16):
    # The default architecture, untrained: ids of the first 1 + j latent frames of a random clip
    # equal, bit for bit, the ids of its first 1 + 4j frames encoded alone - for every j. At 32 px
    # (4 x 4 latents, border and interior positions both): causality is along time, and bf16 convs
    # are emulated on CPUs without bf16 units (64 px took 106 s here).
    torch.manual_seed(1)
    tok = VideoTokenizer(TokenizerConfig()).eval()
    video = _video(2, 17, 32, 32, seed=2)
    full = tok.encode(video, bf16=bf16)
    assert full.shape == (2, 5, 4, 4)
    assert len(full.unique()) > 50  # the check means something only if ids vary (122 of 160 here)
    for j in range(5):
        prefix = tok.encode(video[:, :1 + 4 * j].clone(), bf16=bf16)
        assert torch.equal(prefix, full[:, :1 + j]), f"latent frames 0..{j} differ"


def test_later_frames_do_not_change_earlier_ids(tiny):
    video = _video(1, 9, 64, 64, seed=3)
    changed = video.clone()
    changed[:, 5:] = 255 - changed[:, 5:]  # frames of latent frame 2 only
    a, b = tiny.encode(video), tiny.encode(changed)
    assert torch.equal(a[:, :2], b[:, :2]) and not torch.equal(a[:, 2], b[:, 2])


def test_fsq_ids_and_codes_round_trip():
    fsq = FSQ([8, 8, 8, 5, 5, 5])
    ids = torch.arange(fsq.codebook_size).view(1, -1, 1, 1)  # (b, t, h, w): every id once
    codes = fsq.codes_from_ids(ids)  # (1, 6, 64000, 1, 1)
    assert codes.shape == (1, 6, 64_000, 1, 1)
    assert codes.min() == -1 and codes.max() == 1
    assert len(torch.unique(codes[0, :, :, 0, 0].T, dim=0)) == 64_000  # one code per id
    z = torch.atanh(codes.clamp(-0.999, 0.999))  # a latent that lands on each code
    back_codes, back_ids, penalty = fsq(z)
    assert torch.equal(back_ids, ids)
    assert torch.allclose(back_codes, codes, atol=1e-6)
    assert penalty.item() > 0  # atanh(0.999) = 3.8 lies beyond the bound


def test_fsq_straight_through_and_bound_penalty():
    fsq = FSQ([5, 4])
    z = torch.randn(2, 2, 3, 4, 4, requires_grad=True)
    codes, _, _ = fsq(z)
    codes.sum().backward()
    assert (z.grad != 0).all()  # rounding passes the gradient through
    assert bound_penalty(torch.full((3,), 1.9)).item() == 0
    assert bound_penalty(torch.tensor([3.0, -4.0])).item() == pytest.approx((1 + 4) / 2)
    usage = code_usage(torch.tensor([0, 0, 1, 3]), 8)
    assert usage["used"] == 3 / 8
    assert usage["perplexity"] == pytest.approx(math.exp(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))))


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"tokenizer.fsq_levels=\[1, 8\]"):
        TokenizerConfig(fsq_levels=[1, 8])
    with pytest.raises(ConfigError, match="tokenizer.temporal_downsample=2"):
        TokenizerConfig(temporal_downsample=2)
    with pytest.raises(ConfigError, match="tokenizer.channel_mult"):
        TokenizerConfig(channels=12, channel_mult=[1, 2, 3])


def test_save_load_round_trip(tiny, tmp_path):
    path = save_tokenizer(tiny, tmp_path / "tok" / "tokenizer.safetensors")
    loaded = load_tokenizer(path)
    assert loaded.cfg == TINY and not loaded.training
    video = _video(1, 5, 64, 64, seed=4)
    ids = tiny.encode(video)
    assert torch.equal(loaded.encode(video), ids)
    assert torch.equal(loaded.decode(ids), tiny.decode(ids))


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(TokenizerError, match="missing.safetensors: tokenizer file not found"):
        load_tokenizer(tmp_path / "missing.safetensors")
    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all")
    with pytest.raises(TokenizerError, match="corrupt.safetensors: not a readable safetensors file"):
        load_tokenizer(bad)
    from safetensors.torch import save_file
    bare = tmp_path / "bare.safetensors"
    save_file({"x": torch.zeros(2)}, str(bare))
    with pytest.raises(TokenizerError, match="bare.safetensors: no tokenizer config"):
        load_tokenizer(bare)


def test_training_forward_and_short_overfit():
    torch.manual_seed(0)
    tok = VideoTokenizer(TINY)
    t, y, x = torch.meshgrid(torch.arange(5.0), torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    clip = torch.stack([torch.sin(3 * x + t), torch.cos(2 * y - t), x * y], 0)[None]  # (1, 3, 5, 32, 32) smooth, moving
    recon, ids, aux = tok(clip)
    assert recon.shape == clip.shape and ids.shape == (1, 2, 4, 4) and set(aux) == {"fsq_bound"}
    # A decoder alone can learn one still image; going below the loss of the clip's temporal mean
    # needs codes that differ from frame to frame, i.e. the encoder learning through FSQ.
    still = ((clip - clip.mean(2, keepdim=True)) ** 2).mean().item()
    opt = torch.optim.Adam(tok.parameters(), lr=3e-3)
    losses = []
    for _ in range(100):
        recon, _, aux = tok(clip)
        loss = torch.nn.functional.mse_loss(recon, clip)
        opt.zero_grad()
        (loss + aux["fsq_bound"]).backward()
        opt.step()
        losses.append(loss.item())
    assert min(losses[-5:]) < 0.3 * still < 0.3 * losses[0], (still, losses[::10])
