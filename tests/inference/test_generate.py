"""Long-video generation against a naive reference: the same Loong loop written out with full
recompute (no KV cache, no padding, one row per forward), re-encoding done by hand."""

import math

import numpy as np
import pytest
import torch

from loong_dist.config import GenerateConfig, ModelConfig, TokenizerConfig
from loong_dist.inference.generate import GenerationError, VideoGenerator, check_prompt, pixel_frames
from loong_dist.inference.sampling import sample, split_guided
from loong_dist.models.ar.checkpoint import load_model, save_model
from loong_dist.models.ar.layout import VocabLayout
from loong_dist.models.tokenizer import VideoTokenizer

SIZE, FPS = 16, 8.0  # 16 px -> 2x2 latent frames: 4 tokens per latent frame


def _parts(folder, rope: str = "1d", latent_grid=(2, 2)):
    torch.manual_seed(0)
    tok = VideoTokenizer(TokenizerConfig(channels=8, num_res_blocks=0, decoder_res_blocks=0,
                                         fsq_levels=[5, 5, 5])).eval()
    layout = VocabLayout(text_vocab_size=300, codebook_size=tok.codebook_size)
    cfg = ModelConfig(size="tiny", max_seq_len=128, rope=rope, latent_grid=list(latent_grid))
    from loong_dist.models.ar.model import Transformer
    path = save_model(Transformer(cfg, layout.padded_vocab_size).state_dict(), cfg, layout,
                      folder / "model.safetensors")
    model, layout = load_model(path)  # through the file, as jobs.generate does
    return model, layout, tok


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    return _parts(tmp_path_factory.mktemp("m"))


def log_likelihood(model, layout, prefix, codes) -> float:
    """log p(codes | prefix) among the video tokens, one row, full recompute, no padding."""
    ids = [c + layout.video_offset for c in codes.flatten().tolist()]
    logits = model(torch.tensor([prefix + ids]))[0, len(prefix) - 1:-1, layout.video_offset:layout.vocab_size]
    logp = torch.log_softmax(logits.double(), dim=-1)
    return float(sum(logp[i, c - layout.video_offset] for i, c in enumerate(ids)))


def reference(model, layout, tok, cfg: GenerateConfig, texts, seconds, seed):
    """The algorithm of the module docstring, written plainly."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = layout.video_offset, layout.vocab_size
    n = (SIZE // 8) ** 2
    total = round(seconds * FPS)

    def sample_window(tails, frames, prompts=texts):  # tails: per prompt a list of video token ids
        conds = [list(t) + [layout.bov_id] + tl for t, tl in zip(prompts, tails)]
        unconds = [[layout.bos_id, layout.bov_id] + tl for tl in tails]
        new = [[] for _ in prompts]
        for _ in range(frames * n):
            seqs = conds + (unconds if cfg.cfg_scale != 1 else [])
            seqs = [s + new[i % len(prompts)] for i, s in enumerate(seqs)]
            logits = torch.cat([model(torch.tensor([s]))[:, -1] for s in seqs])  # one row at a time
            if cfg.cfg_scale != 1:
                logits = split_guided(logits, cfg.cfg_scale)
            code = sample(logits[:, lo:hi], cfg.temperature, cfg.top_k, cfg.top_p, g)
            for i, c in enumerate(code.tolist()):
                new[i].append(c + lo)
        return torch.tensor(new).view(len(prompts), frames, SIZE // 8, SIZE // 8) - lo

    with torch.no_grad():
        w, o = cfg.window_latent_frames, cfg.overlap_latent_frames
        first = min(w, 1 + math.ceil((total - 1) / 4))
        k = cfg.first_frame_candidates
        if k == 1:
            codes = sample_window([[] for _ in texts], first)
        else:  # k draws of latent frame 0 per prompt; the one with the largest log p(x | text) - log p(x | "")
            many = [t for t in texts for _ in range(k)]
            drawn = sample_window([[] for _ in many], 1, many)  # (B k, 1, 2, 2)
            score = [log_likelihood(model, layout, list(t) + [layout.bov_id], d)
                     - log_likelihood(model, layout, [layout.bos_id, layout.bov_id], d) for t, d in zip(many, drawn)]
            best = [max(range(k), key=lambda j: score[i * k + j]) for i in range(len(texts))]
            codes = torch.stack([drawn[i * k + j] for i, j in enumerate(best)])  # (B, 1, 2, 2)
            if first > 1:
                rest = sample_window([(c.flatten() + lo).tolist() for c in codes], first - 1)
                codes = torch.cat([codes, rest], dim=1)
        video = tok.decode(codes, bf16=cfg.tokenizer_bf16).numpy()
        while video.shape[1] < total:
            if cfg.reencode:
                tail = tok.encode(video[:, -(1 + 4 * (o - 1)):], bf16=cfg.tokenizer_bf16)
            else:
                tail = codes[:, -o:]
            new = min(w - o, math.ceil((total - video.shape[1]) / 4))
            fresh = sample_window([(t.flatten() + lo).tolist() for t in tail], new)
            codes = torch.cat([tail, fresh], dim=1)
            video = np.concatenate([video, tok.decode(codes, bf16=cfg.tokenizer_bf16).numpy()[:, -4 * new:]], axis=1)
    return video[:, :total]


@pytest.mark.parametrize("reencode,cfg_scale,rope,candidates", [(True, 3.0, "1d", 1), (False, 1.0, "1d", 1),
                                                                  (True, 3.0, "3d", 1), (True, 1.0, "1d", 3),
                                                                  (False, 3.0, "1d", 3)])
def test_matches_naive_reference(parts, tmp_path, reencode, cfg_scale, rope, candidates):
    """With 3D rotary positions the batched rows (left-padded, guided) and the re-encoded tails
    place video tokens as the one-row full recompute does; with first-frame candidates the
    batched, padded scoring keeps the draw the one-row scoring keeps."""
    model, layout, tok = parts if rope == "1d" else _parts(tmp_path, rope)
    cfg = GenerateConfig(window_latent_frames=3, overlap_latent_frames=2, reencode=reencode, cfg_scale=cfg_scale,
                         top_k=20, temperature=1.0, tokenizer_bf16=False, first_frame_candidates=candidates)
    texts = [[2, 17, 40, 99], [2, 250, 8, 31, 5, 77, 12]]  # different lengths: left padding in one batch
    seconds = 26 / FPS  # first window 3 latent = 9 frames, then 5 extensions of 1 latent = 4 frames (last cut to 1)
    gen = VideoGenerator(model, layout, tok, cfg, fps=FPS, size=SIZE)
    seen = []
    result = gen.generate(texts, seconds, seed=5, progress=seen.append)
    expected = reference(model, layout, tok, cfg, texts, seconds, seed=5)
    assert result.frames.shape == (2, 26, SIZE, SIZE, 3) and result.frames.dtype == np.uint8
    np.testing.assert_array_equal(result.frames, expected)
    assert result.windows == 6 and seen[-1] == pytest.approx(26 / FPS) and seen == sorted(seen)


def test_log_likelihood_of_left_padded_rows_is_the_one_row_recompute(parts):
    model, layout, tok = parts
    gen = VideoGenerator(model, layout, tok, GenerateConfig(tokenizer_bf16=False), fps=FPS, size=SIZE)
    prefixes = [[2, 17, 40, 99, layout.bov_id], [2, 250, 8, 31, 5, 77, 12, layout.bov_id], [2, layout.bov_id]]
    codes = torch.randint(0, layout.codebook_size, (3, 2, 2, 2), generator=torch.Generator().manual_seed(1))
    got = gen.log_likelihood(prefixes, codes)
    with torch.no_grad():
        want = [log_likelihood(model, layout, p, c) for p, c in zip(prefixes, codes)]
    assert got.tolist() == pytest.approx(want, rel=1e-5)
    assert all(w < 0 for w in want)


def test_context_and_cache_stay_flat(parts):
    model, layout, tok = parts
    cfg = GenerateConfig(window_latent_frames=3, overlap_latent_frames=1, tokenizer_bf16=False)
    gen = VideoGenerator(model, layout, tok, cfg, fps=FPS, size=SIZE)
    short = gen.generate([[2, 5, 6]], 2.0, seed=0)
    long = gen.generate([[2, 5, 6]], 6.0, seed=0)
    assert long.frames.shape[1] == 48 and short.frames.shape[1] == 16
    assert long.timings["kv_cache_mb_max"] == short.timings["kv_cache_mb_max"]
    # tokens per window after the first: (3 - 1) latent frames of 4 tokens
    assert long.timings["tokens"] - short.timings["tokens"] == (long.windows - short.windows) * 2 * 4


def test_pixel_frames_and_prompt_checks(parts):
    assert [pixel_frames(f) for f in (0, 1, 2, 5, 17)] == [0, 1, 5, 17, 65]
    check_prompt("a b", [2, 9, 9], 3)
    for text, ids in (("", [2]), (" \t", [2, 7])):
        with pytest.raises(GenerationError, match="empty"):
            check_prompt(text, ids, 64)
    with pytest.raises(GenerationError, match="longer than the text context text.max_text_tokens=3"):
        check_prompt("a b c", [2, 9, 9, 9], 3)
    model, layout, tok = parts
    gen = VideoGenerator(model, layout, tok, GenerateConfig(window_latent_frames=40, overlap_latent_frames=2),
                         fps=FPS, size=SIZE)
    with pytest.raises(GenerationError, match="max_seq_len=128"):
        gen.generate([[2, 5]], 1.0, seed=0)


def test_3d_positions_need_the_grid_the_model_was_trained_on(tmp_path):
    model, layout, tok = _parts(tmp_path, "3d", latent_grid=(16, 16))
    with pytest.raises(GenerationError, match=r"16x16 latent grid .* 16 px frames give 2x2"):
        VideoGenerator(model, layout, tok, GenerateConfig(), fps=FPS, size=SIZE)
