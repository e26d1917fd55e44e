"""Generation speed: KV-cached decoding against full recompute, and a 60 s video end to end.

    python bench/generate.py [--size small] [--tokens 128] [--seconds 60] [--image 128] [--threads N]
                             [--precision fp32|bf16]

Part 1 samples `--tokens` video tokens after a prompt shaped like an extension window (16 text
tokens, <bov>, two latent frames of tail), once with the KV cache and once recomputing the whole
sequence for every token, from the same seed; prints tokens/s of both, the ratio, and whether
both drew the same tokens (they should: same logits up to float rounding).
Part 2 generates `--seconds` of `--image` px video at 8 fps with the default generation settings
(top-k, re-encoding, 5-latent-frame windows with 2 of overlap) and prints the wall time and its
parts. Weights are untrained (speed does not depend on them); the tokenizer is the default
architecture (the shipped CPU tokenizer's), or `--tokenizer FILE`.

With `--checkpoint FILE` (a model exported by jobs.train, e.g. the shipped
checkpoints/t2v_cpu/model.safetensors) both parts use that model, its vocabulary, its video
tokenizer and its recommended sampling settings, and `--batch` prompts are generated together.
Part 2 then also prints the sampling rate against the forward pass's FLOP bound: the dense matmul
rate measured in the same run divided by the FLOPs of decoding one token (2 x the matmul
parameters of the blocks and the head, plus the attention over the cached positions).
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from loong_dist.config import GenerateConfig, ModelConfig, TokenizerConfig
from loong_dist.inference.generate import VideoGenerator
from loong_dist.inference.sampling import sample
from loong_dist.models.ar.layout import VocabLayout
from loong_dist.models.ar.model import Transformer
from loong_dist.models.tokenizer import VideoTokenizer, load_tokenizer
from loong_dist.precision import resolve_device
from train_step import matmul_peak  # bench/ is on the path of a script run from it


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.inference_mode()
def decode_tokens(model: Transformer, prompt: torch.Tensor, n: int, lo: int, hi: int, cached: bool,
                  seed: int) -> tuple[torch.Tensor, float]:
    """Sample n tokens after prompt (1, s) with top-k 100; (tokens (n,), seconds)."""
    g = torch.Generator(device=prompt.device).manual_seed(seed)
    out = []
    sync(prompt.device)
    t0 = time.perf_counter()
    if cached:
        cache = model.new_cache(prompt.shape[1] + n)
        logits = model(prompt, cache=cache, last_only=True)[:, -1]
    else:
        seq = prompt
        logits = model(seq, last_only=True)[:, -1]
    for i in range(n):
        token = sample(logits[:, lo:hi], 1.0, 100, 1.0, g) + lo  # (1,)
        out.append(token)
        if i + 1 == n:
            break
        if cached:
            logits = model(token[:, None], cache=cache)[:, -1]
        else:
            seq = torch.cat([seq, token[:, None]], dim=1)
            logits = model(seq, last_only=True)[:, -1]
    sync(prompt.device)
    return torch.cat(out), time.perf_counter() - t0


def decode_flops(cfg: ModelConfig, vocab: int, context: float) -> float:
    """FLOPs of one cached decoding step for one row: 2 x (the blocks' matmul parameters + the
    head's) + attention scores and values over `context` cached positions (4 x layers x heads x
    head width x context)."""
    from loong_dist.models.ar.sizes import count_parameters
    p = count_parameters(cfg.dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.ffn_dim, vocab)
    return 2.0 * (p["blocks"] + vocab * cfg.dim) + 4.0 * cfg.n_layers * cfg.dim * context


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="small", help="model size (loong_dist/models/ar/sizes.py); small: the CPU demo")
    p.add_argument("--tokens", type=int, default=128, help="tokens sampled in part 1")
    p.add_argument("--seconds", type=float, default=60.0, help="video length of part 2 (0: skip)")
    p.add_argument("--image", type=int, default=128, help="frame side (pixels)")
    p.add_argument("--tokenizer", default="", help="video tokenizer file (default: untrained, default architecture)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="transformer weights (generate.precision)")
    p.add_argument("--checkpoint", default="", help="a model exported by jobs.train (its tokenizer and settings too)")
    p.add_argument("--batch", type=int, default=1, help="prompts generated together in part 2")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(resolve_device(args.device))
    torch.manual_seed(0)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    settings = {}
    if args.checkpoint:
        from loong_dist.inference.carried import video_tokenizer_path
        from loong_dist.models.ar.checkpoint import load_model, read_model_meta
        extra = read_model_meta(args.checkpoint)[2]
        settings = extra.get("generate") or {}
        tok = load_tokenizer(video_tokenizer_path(extra, args.tokenizer, args.checkpoint), device)
        model, layout = load_model(args.checkpoint, device=device, dtype=dtype)
        cfg, args.size = model.cfg, f"{args.checkpoint}"
    else:
        if args.tokenizer:
            tok = load_tokenizer(args.tokenizer, device)
        else:
            tok = VideoTokenizer(TokenizerConfig()).to(device).eval()
        layout = VocabLayout(text_vocab_size=512, codebook_size=tok.codebook_size)
        cfg = ModelConfig(size=args.size, max_seq_len=4608)
        model = Transformer(cfg, layout.padded_vocab_size).to(device=device, dtype=dtype).eval()
    n_params = sum(p.numel() for p in model.parameters())
    per_frame = (args.image // 8) ** 2
    print(f"device {device}, torch threads {torch.get_num_threads()}, model {args.size} ({n_params / 1e6:.1f}M "
          f"parameters, vocab {layout.padded_vocab_size}, {args.precision}), "
          f"{args.image} px -> {per_frame} tokens per latent frame")

    g = torch.Generator().manual_seed(1)
    text = torch.randint(6, 512, (1, 16), generator=g)
    tail = torch.randint(layout.video_offset, layout.vocab_size, (1, 2 * per_frame), generator=g)
    prompt = torch.cat([torch.tensor([[layout.bos_id]]), text, torch.tensor([[layout.bov_id]]), tail], dim=1).to(device)
    lo, hi = layout.video_offset, layout.vocab_size
    decode_tokens(model, prompt, 4, lo, hi, True, 0)  # warm-up
    cached_ids, t_cached = decode_tokens(model, prompt, args.tokens, lo, hi, True, 0)
    full_ids, t_full = decode_tokens(model, prompt, args.tokens, lo, hi, False, 0)
    print(f"part 1: {args.tokens} tokens after a {prompt.shape[1]}-token prompt")
    print(f"  KV cache        {args.tokens / t_cached:8.1f} tokens/s")
    print(f"  full recompute  {args.tokens / t_full:8.1f} tokens/s")
    print(f"  ratio (cache / recompute): {t_full / t_cached:.1f}x; same tokens drawn: "
          f"{int((cached_ids == full_ids).sum())}/{args.tokens}")

    if args.seconds > 0:
        gen_cfg = GenerateConfig(seconds=args.seconds, device=str(device), precision=args.precision,
                                 tokenizer_bf16="auto", batch_size=args.batch, **settings)
        gen = VideoGenerator(model, layout, tok, gen_cfg, fps=8.0, size=args.image)
        marks = []
        t0 = time.perf_counter()
        result = gen.generate([[layout.bos_id] + text[0].tolist()] * args.batch, args.seconds, seed=0,
                              progress=lambda s: marks.append((s, time.perf_counter() - t0)))
        t = result.timings
        print(f"part 2: {args.batch} x {args.seconds:g} s of {args.image}x{args.image} video at 8 fps "
              f"({result.frames.shape[1]} frames, {result.windows} windows of {gen_cfg.window_latent_frames} latent "
              f"frames, top_k {gen_cfg.top_k}, guidance {gen_cfg.cfg_scale}, re-encoding {gen_cfg.reencode})")
        print(f"  wall {t['total_s']:.1f} s = {args.batch * args.seconds / t['total_s']:.3f} s of video per wall "
              f"second; sampling {t['sample_s']:.1f} s + prefill {t['prefill_s']:.1f} s ({t['tokens_per_s']:.0f} "
              f"tokens/s), decode {t['decode_s']:.1f} s, re-encode {t.get('encode_s', 0.0):.1f} s")
        rows = args.batch * (2 if gen_cfg.cfg_scale != 1.0 else 1)
        context = (gen_cfg.window_latent_frames * per_frame) / 2 + 18  # mean cached positions in a window
        flops = decode_flops(cfg, layout.padded_vocab_size, context) * rows / args.batch  # per token drawn
        peak = matmul_peak(dtype, device)
        bound = peak / flops
        print(f"  tokens/s {t['tokens_per_s']:.0f} against the forward FLOP bound {bound:.0f} tokens/s "
              f"({flops / 1e6:.1f} MFLOP a token over {rows} model rows, matmul rate {peak / 1e9:.1f} GFLOP/s "
              f"measured here): {t['tokens_per_s'] / bound:.1%} of the bound")
        half = next(m for m in marks if m[0] >= args.seconds / 2)
        flat = (f"flat per frame: first half {half[1] / half[0]:.2f} s/s of video, second half "
                f"{(marks[-1][1] - half[1]) / (marks[-1][0] - half[0]):.2f} s/s; " if marks[-1][0] > half[0] else "")
        print(f"  {flat}KV cache at most {t['kv_cache_mb_max']:.1f} MiB; peak RSS "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
