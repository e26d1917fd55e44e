"""Untrusted files: nothing the project loads can run code, shard indexes and tars cannot point
outside their folder, and S3 credentials never reach logs, dumped configs, reports or exceptions.

- Every torch.load in loong_dist/, jobs/, data_prep/ and bench/ passes weights_only=True; no
  pickle.load(s), no np.load(allow_pickle=True) (an AST scan, checked against a bad example).
- Real pickles with a payload (a file is created when unpickled) given as a shard member, a video
  tokenizer and a model file are refused with a one-line error; the payload never runs.
- Real tar bytes whose members have absolute paths, `..` or links, and indexes whose shard names or
  keys climb out of the folder, are refused by ShardIndex / ShardReader.
- Sentinel credentials in the environment of real jobs (jobs.train, data_prep.pretokenize) run
  against the S3 server on 127.0.0.1, failing and succeeding: no output file, S3 object, Ray log,
  stdout or stderr holds them; neither do formatted StorageError tracebacks.
"""

import ast
import io
import json
import os
import pickle
import re
import subprocess
import sys
import tarfile
import traceback
import uuid
from pathlib import Path

import boto3
import numpy as np
import pytest

from loong_dist.config import Config, describe, load_config, save_config
from loong_dist.data.shards import ShardError, ShardIndex, ShardReader
from loong_dist.errors import UserError
from loong_dist.io.storage import Storage, join
from tests.data.test_shards_and_loader import make_samples, write_shards

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
SCANNED = ("loong_dist", "jobs", "data_prep", "bench")


# ----------------------------------------------------------------------------------------------
# Loading code: an AST scan


def unsafe_loads(source: str, name: str = "<src>") -> list[str]:
    """Calls that may unpickle: torch.load without weights_only=True, pickle/dill/joblib loads,
    np.load(allow_pickle=True), torch.serialization.load."""
    found = []
    for node in ast.walk(ast.parse(source, name)):
        if not isinstance(node, ast.Call):
            continue
        func = ast.unparse(node.func)
        kw = {k.arg: k.value for k in node.keywords}
        where = f"{name}:{node.lineno}: {ast.unparse(node)[:100]}"
        if func.endswith("torch.load") or func in ("load", "torch.serialization.load") and "weights_only" in kw:
            wo = kw.get("weights_only")
            if not (isinstance(wo, ast.Constant) and wo.value is True):
                found.append(where)
        elif func.split(".")[0] in ("pickle", "cPickle", "dill", "joblib", "cloudpickle") and func.endswith(
                ("load", "loads", "Unpickler")):
            found.append(where)
        elif func.endswith(("np.load", "numpy.load")):
            ap = kw.get("allow_pickle")
            if ap is not None and not (isinstance(ap, ast.Constant) and ap.value is False):
                found.append(where)
    return found


def test_scanner_catches_unsafe_loads():
    bad = ("import torch, pickle, numpy as np\n"
           "torch.load(p)\ntorch.load(p, weights_only=False)\ntorch.load(p, map_location='cpu', weights_only=flag)\n"
           "pickle.load(f)\npickle.loads(b)\nnp.load(p, allow_pickle=True)\n")
    assert len(unsafe_loads(bad)) == 6
    ok = "torch.load(p, weights_only=True)\nnp.load(p)\nnp.load(p, allow_pickle=False)\njson.load(f)\n"
    assert unsafe_loads(ok) == []


def test_no_unsafe_loads_in_the_project():
    files = [p for d in SCANNED for p in sorted((ROOT / d).rglob("*.py"))]
    assert len(files) > 30
    found = [x for p in files for x in unsafe_loads(p.read_text(), str(p.relative_to(ROOT)))]
    assert found == [], "calls that may unpickle an untrusted file:\n" + "\n".join(found)


# ----------------------------------------------------------------------------------------------
# Real pickles with a payload


class _Payload:
    """Unpickling this creates the marker file (what a malicious checkpoint would do, harmlessly)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _pickle_bytes(marker: Path) -> bytes:
    return pickle.dumps({"weight": _Payload(str(marker))})


def test_pickled_checkpoints_are_refused_and_never_run(tmp_path):
    import torch

    from loong_dist.models.ar.checkpoint import ModelFileError, load_model
    from loong_dist.models.tokenizer import load_tokenizer
    marker = tmp_path / "payload-ran"
    # Real torch.save files (a zip holding data.pkl) whose pickle would create the marker.
    for name in ("tok.safetensors", "model.safetensors", "tok.pt"):
        torch.save({"weight": _Payload(str(marker))}, tmp_path / name)
    (tmp_path / "raw.pkl").write_bytes(_pickle_bytes(marker))
    for loader, name in ((load_tokenizer, "tok.safetensors"), (load_tokenizer, "tok.pt"),
                         (load_tokenizer, "raw.pkl"), (load_model, "model.safetensors")):
        with pytest.raises(UserError, match="not a readable safetensors file") as e:
            loader(tmp_path / name)
        assert "\n" not in str(e.value) and name in str(e.value)
    # torch itself, as the project calls it, refuses the payload too.
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "tok.pt", weights_only=True)
    assert not marker.exists()
    assert isinstance(ModelFileError("x"), UserError)


def test_deepspeed_checkpoint_files_load_weights_only(tmp_path):
    """Training checkpoints: DeepSpeed itself would unpickle them; the engine we build loads every
    file through load_checkpoint_file, which refuses a payload (and loads real checkpoints: the
    trainer's resume tests)."""
    import torch

    from loong_dist.parallel.engine import load_checkpoint_file
    marker = tmp_path / "payload-ran"
    torch.save({"module": {"weight": torch.ones(2)}, "client": _Payload(str(marker))},
               tmp_path / "mp_rank_00_model_states.pt")
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint_file(str(tmp_path / "mp_rank_00_model_states.pt"))
    assert not marker.exists()
    torch.save({"module": {"weight": torch.ones(2)}, "step": 3}, tmp_path / "plain.pt")
    assert load_checkpoint_file(str(tmp_path / "plain.pt"))["step"] == 3


def _craft_shard(path: Path, members: list[tuple[str, bytes | None, str | None]]) -> dict[str, tarfile.TarInfo]:
    """A real tar of (name, data, link target): a regular file when data is given, else a symlink."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data, link in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    with tarfile.open(path) as tar:
        return {m.name: m for m in tar.getmembers()}


def _npy(a) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=True)
    return buf.getvalue()


def _good_parts(key: str) -> dict[str, bytes]:
    return {"video.npy": _npy(np.zeros((1, 2, 2), np.uint16)), "text.npy": _npy(np.array([2, 7], np.int32)),
            "caption.txt": b"a caption", "json": b"{}"}


def _index_for(folder: Path, shard: str, key: str, infos: dict[str, tarfile.TarInfo], names: dict[str, str]) -> None:
    """index.json naming sample `key` whose member `suffix` lies where tar member names[suffix] does."""
    ranges = {suffix: [infos[n].offset_data, infos[n].size] for suffix, n in names.items()}
    index = {"version": 1, "meta": {}, "totals": {},
             "shards": [{"name": shard, "num_samples": 1, "video_tokens": 4,
                         "samples": [{"key": key, "latent_frames": 1, "video_tokens": 4, "text_tokens": 2,
                                      "ranges": ranges}]}]}
    (folder / "index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("bad", ["/etc/evil", "../evil", "sub/../../evil", "symlink", "other-key"])
def test_tar_members_outside_the_folder_are_refused(tmp_path, bad):
    parts = _good_parts("k")
    names = {suffix: f"k.{suffix}" for suffix in parts}
    if bad == "symlink":
        members = [(names[s], d, None) for s, d in parts.items() if s != "caption.txt"]
        members.insert(2, ("k.caption.txt", None, "/etc/passwd"))
        needle = "link or special file"
    elif bad == "other-key":
        names = {suffix: f"z.{suffix}" for suffix in parts}
        members = [(names[s], d, None) for s, d in parts.items()]
        needle = "is not the k.video.npy"
    else:
        names = {suffix: f"{bad}.{suffix}" for suffix in parts}
        members = [(names[s], d, None) for s, d in parts.items()]
        needle = "absolute path or '..'"
    infos = _craft_shard(tmp_path / "shard-000000.tar", members)
    if bad == "symlink":
        infos["k.caption.txt"].offset_data, infos["k.caption.txt"].size = infos["k.caption.txt"].offset_data, 9
    _index_for(tmp_path, "shard-000000.tar", "k", infos, names)
    index = ShardIndex.load(str(tmp_path))
    with pytest.raises(ShardError, match=needle.replace("(", r"\(").replace(".", r"\.")) as e:
        ShardReader(index).read(index.samples[0])
    assert "\n" not in str(e.value)


def test_a_well_formed_crafted_shard_reads(tmp_path):
    parts = _good_parts("k")
    names = {suffix: f"k.{suffix}" for suffix in parts}
    infos = _craft_shard(tmp_path / "shard-000000.tar", [(names[s], d, None) for s, d in parts.items()])
    _index_for(tmp_path, "shard-000000.tar", "k", infos, names)
    index = ShardIndex.load(str(tmp_path))
    sample = ShardReader(index).read(index.samples[0])
    assert sample.caption == "a caption" and sample.video.shape == (1, 2, 2)


@pytest.mark.parametrize("shard,key,needle", [
    ("../outside.tar", "k", "not a plain file name"),
    ("/etc/passwd", "k", "not a plain file name"),
    ("..", "k", "not a plain file name"),
    ("shard-000000.tar", "../k", "must be a plain name"),
    ("shard-000000.tar", "a/b", "must be a plain name"),
])
def test_index_entries_outside_the_folder_are_refused(tmp_path, shard, key, needle):
    parts = _good_parts("k")
    names = {suffix: f"k.{suffix}" for suffix in parts}
    infos = _craft_shard(tmp_path / "shard-000000.tar", [(names[s], d, None) for s, d in parts.items()])
    _index_for(tmp_path, shard, key, infos, names)
    with pytest.raises(ShardError, match=needle) as e:
        ShardIndex.load(str(tmp_path))
    assert "\n" not in str(e.value)


def test_pickled_shard_member_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "payload-ran"
    parts = _good_parts("k")
    parts["video.npy"] = _npy(np.array([_Payload(str(marker))], dtype=object))  # an object array: a pickle
    names = {suffix: f"k.{suffix}" for suffix in parts}
    infos = _craft_shard(tmp_path / "shard-000000.tar", [(names[s], d, None) for s, d in parts.items()])
    _index_for(tmp_path, "shard-000000.tar", "k", infos, names)
    index = ShardIndex.load(str(tmp_path))
    with pytest.raises(ShardError, match="sample k is corrupt"):
        ShardReader(index).read(index.samples[0])
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------
# Credentials


def test_no_config_field_holds_credentials(tmp_path):
    """Credentials come from boto3's own chain (environment, profile, instance role), never from the
    config, so a dumped config cannot hold them."""
    creds = re.compile(r"(^|_)(secret|password|passwd|access_key|key_id|session_token|token|credentials?|api_key)$")
    keys = [k for k, _, _ in describe(Config)]
    assert len(keys) > 50 and [k for k in keys if creds.search(k.split(".")[-1].lower())] == []
    path = save_config(load_config(None, ["storage.endpoint_url=http://127.0.0.1:9"]), tmp_path / "c.yaml")
    assert "aws_" not in path.read_text().lower()


def _sentinels() -> dict[str, str]:
    tag = uuid.uuid4().hex.upper()
    return {"AWS_ACCESS_KEY_ID": f"AKIASENT{tag[:12]}", "AWS_SECRET_ACCESS_KEY": f"sentinelSecret{tag[12:28]}",
            "AWS_SESSION_TOKEN": f"sentinelToken{tag[:20]}"}


def _grep_tree(root: Path, needles: list[str]) -> list[str]:
    hits = []
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            data = p.read_bytes()
            hits += [f"{p}: {n[:8]}..." for n in needles if n.encode() in data]
    return hits


def test_storage_errors_hold_no_credentials(s3_env, s3_bucket, monkeypatch):
    creds = _sentinels()
    for k, v in creds.items():
        monkeypatch.setenv(k, v)
    storage = Storage(load_config(None, ["storage.max_attempts=1", "storage.connect_timeout_s=1"]).storage)
    bucket = s3_bucket
    failures = [lambda: storage.read_bytes(f"{bucket}/missing"), lambda: storage.read_bytes("s3://no-such-bkt/x"),
                lambda: storage.check_bucket("s3://no-such-bkt/x"), lambda: storage.list("s3://no-such-bkt/"),
                lambda: storage.read_range(f"{bucket}/missing", 0, 10),
                lambda: Storage(load_config(None, ["storage.endpoint_url=http://127.0.0.1:9", "storage.max_attempts=1",
                                                   "storage.connect_timeout_s=1"]).storage).read_bytes(f"{bucket}/x")]
    for fail in failures:
        with pytest.raises(UserError) as e:
            fail()
        text = "".join(traceback.format_exception(e.value)) + repr(e.value)
        assert not [n for n in creds.values() if n in text], text


def _run(module: str, *args: str, env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


TRAIN = ["model.size=tiny", "model.max_seq_len=512", "parallel.precision=fp32", "parallel.zero_stage=1",
         "train.token_budget=700", "train.save_every=2", "optim.steps=2", "optim.warmup_steps=1",
         "train.loader_workers=2", "run.log_every=1", "--nproc", "1"]


def test_jobs_never_print_or_write_credentials(s3_endpoint, s3_env, s3_bucket, pretok_assets, tmp_path):
    """jobs.train and data_prep.pretokenize against S3, each failing and succeeding, with sentinel
    credentials: every output file, S3 object, Ray session log, stdout and stderr is grepped."""
    creds = _sentinels()
    needles = list(creds.values())
    ray_tmp = Path(f"/tmp/loong-rel-{uuid.uuid4().hex[:6]}")  # Ray socket paths must stay short
    env = dict(os.environ, **creds, AWS_ENDPOINT_URL=s3_endpoint, AWS_DEFAULT_REGION="us-east-1",
               RAY_TMPDIR=str(ray_tmp), RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
    env.pop("RAY_ADDRESS", None)
    boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
                 aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"])  # the server takes any key
    storage = Storage()
    shards = join(s3_bucket, "shards")
    write_shards(storage, shards, make_samples(24))
    a = pretok_assets
    pretok = ["--tokenizer", str(a / "tok.safetensors"), "--text-tokenizer", str(a / "text.model"),
              "--frames", "1,17", "--fps", "8", "--size", "32", "pretokenize.local_cpus=2",
              "pretokenize.encode_batch=4", "pretokenize.progress=false", "pretokenize.bf16=false"]
    manifest = tmp_path / "manifest.jsonl"
    lines = (a / "syn" / "manifest.jsonl").read_text().splitlines()[:4]
    manifest.write_text("".join(json.dumps(dict(json.loads(x), video=str(a / "syn" / json.loads(x)["video"]))) + "\n"
                                for x in lines))
    runs = {
        "train, no index": (["jobs.train", "--shards", join(s3_bucket, "nothing"), "--out", str(tmp_path / "r0"),
                             *TRAIN], 2),
        "train, no bucket": (["jobs.train", "--shards", "s3://no-such-bucket-cred/x", "--out", str(tmp_path / "r1"),
                              *TRAIN], 2),
        "train": (["jobs.train", "--shards", shards, "--out", str(tmp_path / "run"), *TRAIN], 0),
        "pretokenize, no bucket": (["data_prep.pretokenize", "--manifest", str(manifest), "--out",
                                    "s3://no-such-bucket-cred/out", *pretok], 2),
        "pretokenize, unreachable": (["data_prep.pretokenize", "--manifest", str(manifest), "--out",
                                      join(s3_bucket, "x"), *pretok, "storage.endpoint_url=http://127.0.0.1:9",
                                      "storage.max_attempts=1", "storage.connect_timeout_s=1"], 2),
        "pretokenize": (["data_prep.pretokenize", "--manifest", str(manifest), "--out", join(s3_bucket, "tok"),
                         *pretok], 0),
    }
    try:
        for name, (args, rc) in runs.items():
            r = _run(*args, env=env)
            assert r.returncode == rc, (name, r.stderr[-3000:])
            for stream in (r.stdout, r.stderr):
                assert not [n for n in needles if n in stream], (name, stream[-2000:])
            if rc:
                assert r.stderr.strip().splitlines()[-1].startswith("error: "), (name, r.stderr[-2000:])
        assert (tmp_path / "run" / "config.yaml").exists() and list((tmp_path / "run" / "checkpoints").rglob("*.pt"))
        assert storage.exists(join(s3_bucket, "tok", "index.json"))
        assert _grep_tree(tmp_path, needles) == []
        assert list(ray_tmp.rglob("*.log")) or list(ray_tmp.rglob("*.out")), "the Ray session wrote no logs"
        assert _grep_tree(ray_tmp, needles) == []
        objects = storage.list(s3_bucket + "/")
        assert len(objects) > 5
        assert [u for u in objects if any(n.encode() in storage.read_bytes(u) for n in needles)] == []
    finally:
        subprocess.run(["rm", "-rf", str(ray_tmp)], check=False)
