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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="small", help="model size (loong_dist/models/ar/sizes.py); small: the CPU demo")
    p.add_argument("--tokens", type=int, default=128, help="tokens sampled in part 1")
    p.add_argument("--seconds", type=float, default=60.0, help="video length of part 2 (0: skip)")
    p.add_argument("--image", type=int, default=128, help="frame side (pixels)")
    p.add_argument("--tokenizer", default="", help="video tokenizer file (default: untrained, default architecture)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="transformer weights (generate.precision)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    tok = load_tokenizer(args.tokenizer, device) if args.tokenizer else VideoTokenizer(TokenizerConfig()).to(device).eval()
    layout = VocabLayout(text_vocab_size=512, codebook_size=tok.codebook_size)
    cfg = ModelConfig(size=args.size, max_seq_len=4608)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    model = Transformer(cfg, layout.padded_vocab_size).to(device=device, dtype=dtype).eval()
    n_params = sum(p.numel() for p in model.parameters())
    per_frame = (args.image // 8) ** 2
    print(f"device {device}, torch threads {torch.get_num_threads()}, model {args.size} ({n_params / 1e6:.1f}M "
          f"parameters, vocab {layout.padded_vocab_size}, {args.precision}), {args.image} px -> {per_frame} tokens per latent frame")

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
        gen_cfg = GenerateConfig(seconds=args.seconds, device=str(device), precision=args.precision)
        gen = VideoGenerator(model, layout, tok, gen_cfg, fps=8.0, size=args.image)
        marks = []
        t0 = time.perf_counter()
        result = gen.generate([[layout.bos_id] + text[0].tolist()], args.seconds, seed=0,
                              progress=lambda s: marks.append((s, time.perf_counter() - t0)))
        t = result.timings
        print(f"part 2: {args.seconds:g} s of {args.image}x{args.image} video at 8 fps ({result.frames.shape[1]} frames, "
              f"{result.windows} windows, top_k {gen_cfg.top_k}, re-encoding {gen_cfg.reencode})")
        print(f"  wall {t['total_s']:.1f} s = {t['total_s'] / args.seconds:.2f} s per second of video; "
              f"sampling {t['sample_s']:.1f} s + prefill {t['prefill_s']:.1f} s ({t['tokens_per_s']:.0f} tokens/s), "
              f"decode {t['decode_s']:.1f} s, re-encode {t.get('encode_s', 0.0):.1f} s")
        half = next(m for m in marks if m[0] >= args.seconds / 2)
        print(f"  flat per frame: first half {half[1] / half[0]:.2f} s/s of video, second half "
              f"{(marks[-1][1] - half[1]) / (marks[-1][0] - half[0]):.2f} s/s; KV cache at most "
              f"{t['kv_cache_mb_max']:.1f} MiB; peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
