"""One interface over local paths and s3://bucket/key URIs.

    store = Storage(cfg.storage)
    store.write_bytes("s3://corpus/shards/000000.tar", data)
    with store.open_write("out/index.json") as f: f.write(b"...")
    store.list("s3://corpus/shards/")            # sorted URIs under the prefix

Writes never leave a partial object under the final name: a local write goes to a hidden
temporary file in the same folder and is renamed over the target once complete (after fsync);
an S3 object only appears when PutObject or the multipart upload completes, and an upload that
fails is aborted. Retries are botocore's own (`storage.retry_mode`, `storage.max_attempts`), and
the endpoint comes from `storage.endpoint_url` or, when that is unset, from boto3's standard
lookup (`AWS_ENDPOINT_URL`). Credentials are never put into messages.

Failures are `StorageError`s; those of the store itself, still failing after botocore's retries
(connection refused, dropped or timed out, 5xx, throttling), are `StorageUnavailable`: a caller
can tell "this object is missing" (a fact about the object) from "S3 is down" (retry later).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import boto3
import botocore.config
import botocore.exceptions
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig

from loong_dist.config import StorageConfig
from loong_dist.errors import StorageError, StorageUnavailable

_UNAVAILABLE_CODES = frozenset({
    "InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "RequestTimeoutException",
    "PriorRequestNotComplete", "Throttling", "ThrottlingException", "RequestThrottled", "RequestLimitExceeded",
    "BandwidthLimitExceeded", "TooManyRequestsException"})
"""S3 error codes of the store failing on its side, whatever the object (with any HTTP 5xx status:
what botocore's standard retry mode retries as transient or throttled)."""
_UNREACHABLE = (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError,
                botocore.exceptions.IncompleteReadError)
"""botocore's failures to get an answer at all: connection refused, dropped or timed out (before
or while the body streams), a body cut short."""


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once at import: os.umask can only be read by setting it


def is_s3(uri: str | os.PathLike) -> bool:
    return str(uri).startswith("s3://")


@dataclass(frozen=True)
class S3Url:
    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str) -> "S3Url":
        rest = uri[len("s3://"):]
        bucket, _, key = rest.partition("/")
        if len(bucket) < 3 or not bucket.replace("-", "").replace(".", "").isalnum() or bucket != bucket.lower():
            raise StorageError(f"{uri}: '{bucket}' is not a valid S3 bucket name "
                               "(3-63 lowercase letters, digits, '-' or '.')")
        return cls(bucket, key)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def join(base: str | os.PathLike, *parts: str) -> str:
    """Join path parts onto a local path or an s3:// URI."""
    base = str(base)
    if is_s3(base):
        return "/".join([base.rstrip("/")] + [p.strip("/") for p in parts])
    return str(Path(base).joinpath(*parts))


def parent(uri: str) -> str:
    if is_s3(uri):
        return uri.rstrip("/").rsplit("/", 1)[0]
    return str(Path(uri).parent)


def resolve_relative(path: str, base_dir: str) -> str:
    """A manifest's relative path, taken relative to the manifest's own folder or prefix."""
    if is_s3(path) or os.path.isabs(path):
        return path
    return join(base_dir, path)


class Storage:
    """Reads and writes local paths and s3:// URIs; one boto3 client, made on first S3 use."""

    def __init__(self, cfg: StorageConfig | None = None):
        self.cfg = cfg or StorageConfig()
        self._client = None

    # -- S3 plumbing ------------------------------------------------------------------------------

    @property
    def client(self):
        if self._client is None:
            cfg = self.cfg
            boto_cfg = botocore.config.Config(
                retries={"mode": cfg.retry_mode, "max_attempts": cfg.max_attempts},
                connect_timeout=cfg.connect_timeout_s, read_timeout=cfg.read_timeout_s,
                s3={"addressing_style": "path"} if cfg.endpoint_url or os.environ.get("AWS_ENDPOINT_URL") else None)
            kwargs = {"config": boto_cfg}
            if cfg.endpoint_url:
                kwargs["endpoint_url"] = cfg.endpoint_url
            if cfg.region:
                kwargs["region_name"] = cfg.region
            self._client = boto3.session.Session().client("s3", **kwargs)
        return self._client

    @property
    def endpoint(self) -> str:
        return self.client.meta.endpoint_url

    def _transfer_config(self) -> TransferConfig:
        chunk = self.cfg.multipart_chunk_mb * 1024 * 1024
        return TransferConfig(multipart_threshold=chunk, multipart_chunksize=chunk, use_threads=False)

    @contextlib.contextmanager
    def _s3_errors(self, uri: str, action: str):
        """Turn botocore failures into one-line StorageErrors that name the URI (never credentials)."""
        try:
            yield
        except botocore.exceptions.ClientError as e:
            raise self._client_error(e, uri, action) from None
        except S3UploadFailedError as e:  # boto3's upload_file wraps the ClientError it met
            cause = e.__cause__ or e.__context__
            if isinstance(cause, botocore.exceptions.ClientError):
                raise self._client_error(cause, uri, action) from None
            raise StorageError(f"{uri}: {action} failed: {e}") from None
        except botocore.exceptions.NoCredentialsError:
            raise StorageError(f"{uri}: no S3 credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
                               "or a profile)") from None
        except _UNREACHABLE as e:
            raise StorageUnavailable(f"{uri}: cannot reach the S3 endpoint {self.endpoint} to {action} "
                                     f"({type(e).__name__}, after {self.cfg.max_attempts} attempts)") from None

    def _client_error(self, e: botocore.exceptions.ClientError, uri: str, action: str) -> StorageError:
        """The one-line error for an S3 error answer: about the object (missing, denied) or about
        the store (5xx, throttling: StorageUnavailable)."""
        err = e.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        if code in ("NoSuchBucket",):
            return StorageError(f"{uri}: bucket does not exist (at {self.endpoint})")
        if code in ("NoSuchKey", "404", "NotFound"):
            return StorageError(f"{uri}: no such object")
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return StorageError(f"{uri}: access denied ({code}) while trying to {action}")
        if code in _UNAVAILABLE_CODES or status >= 500:
            return StorageUnavailable(f"{uri}: the S3 endpoint {self.endpoint} failed to {action}: {code or status} "
                                      f"(after {self.cfg.max_attempts} attempts)")
        return StorageError(f"{uri}: {action} failed: {code or status} {err.get('Message', '')}".rstrip())

    # -- the interface ----------------------------------------------------------------------------

    def exists(self, uri: str) -> bool:
        uri = str(uri)
        if not is_s3(uri):
            return Path(uri).exists()
        url = S3Url.parse(uri)
        try:
            self.client.head_object(Bucket=url.bucket, Key=url.key)
            return True
        except botocore.exceptions.ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            with self._s3_errors(uri, "check"):
                raise
        except botocore.exceptions.BotoCoreError:
            with self._s3_errors(uri, "check"):
                raise

    def check_bucket(self, uri: str) -> None:
        """Fail fast, with one line, when the bucket of `uri` is unreachable or missing."""
        if not is_s3(uri):
            return
        url = S3Url.parse(str(uri))
        bucket = f"s3://{url.bucket}"
        try:
            self.client.head_bucket(Bucket=url.bucket)
        except botocore.exceptions.ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchBucket", "NotFound"):
                raise StorageError(f"{bucket}: bucket does not exist (at {self.endpoint})") from None
            with self._s3_errors(bucket, "reach the bucket"):
                raise
        except botocore.exceptions.BotoCoreError:
            with self._s3_errors(bucket, "reach the bucket"):
                raise

    def read_bytes(self, uri: str) -> bytes:
        uri = str(uri)
        if not is_s3(uri):
            try:
                return Path(uri).read_bytes()
            except FileNotFoundError:
                raise StorageError(f"{uri}: no such file") from None
            except IsADirectoryError:
                raise StorageError(f"{uri}: is a folder, not a file") from None
            except PermissionError:
                raise StorageError(f"{uri}: permission denied") from None
        url = S3Url.parse(uri)
        with self._s3_errors(uri, "read"):
            return self.client.get_object(Bucket=url.bucket, Key=url.key)["Body"].read()

    def read_range(self, uri: str, offset: int, size: int) -> bytes:
        """`size` bytes from `offset` (a ranged GET on S3)."""
        uri = str(uri)
        if not is_s3(uri):
            try:
                with open(uri, "rb") as f:
                    f.seek(offset)
                    return f.read(size)
            except FileNotFoundError:
                raise StorageError(f"{uri}: no such file") from None
        url = S3Url.parse(uri)
        with self._s3_errors(uri, "read"):
            return self.client.get_object(Bucket=url.bucket, Key=url.key,
                                          Range=f"bytes={offset}-{offset + size - 1}")["Body"].read()

    def read_text(self, uri: str) -> str:
        data = self.read_bytes(uri)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise StorageError(f"{uri}: not UTF-8 text (byte {e.start})") from None

    @contextlib.contextmanager
    def open_read(self, uri: str) -> Iterator[BinaryIO]:
        """A binary stream of the object (S3: streamed from the response body, not buffered)."""
        uri = str(uri)
        if not is_s3(uri):
            try:
                f = open(uri, "rb")
            except FileNotFoundError:
                raise StorageError(f"{uri}: no such file") from None
            with f:
                yield f
            return
        url = S3Url.parse(uri)
        with self._s3_errors(uri, "read"):  # the reads too: a connection may drop mid-body
            body = self.client.get_object(Bucket=url.bucket, Key=url.key)["Body"]
            try:
                yield body
            finally:
                body.close()

    def write_bytes(self, uri: str, data: bytes) -> None:
        with self.open_write(uri) as f:
            f.write(data)

    def write_text(self, uri: str, text: str) -> None:
        self.write_bytes(uri, text.encode("utf-8"))

    @contextlib.contextmanager
    def open_write(self, uri: str) -> Iterator[BinaryIO]:
        """A binary stream that becomes `uri` only when the block exits without an exception."""
        uri = str(uri)
        if not is_s3(uri):
            path = Path(uri)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as f:
                    yield f
                    f.flush()
                    os.fsync(f.fileno())
                os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give what open() would
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            return
        url = S3Url.parse(uri)
        # Spool to a local temporary file, then one upload: the object appears whole or not at all.
        with tempfile.TemporaryFile() as f:
            yield f
            f.seek(0)
            with self._s3_errors(uri, "write"):
                self.client.upload_fileobj(f, url.bucket, url.key, Config=self._transfer_config())

    def upload_file(self, local: str | os.PathLike, uri: str) -> None:
        """Copy a local file to `uri` (a local path or s3://), atomically."""
        uri = str(uri)
        if not is_s3(uri):
            with open(local, "rb") as src, self.open_write(uri) as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            return
        url = S3Url.parse(uri)
        with self._s3_errors(uri, "write"):
            self.client.upload_file(str(local), url.bucket, url.key, Config=self._transfer_config())

    def download_file(self, uri: str, local: str | os.PathLike) -> Path:
        """Copy `uri` to a local file (written atomically)."""
        local = Path(local)
        with self.open_read(uri) as src, self.open_write(str(local)) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        return local

    def list(self, prefix: str) -> list[str]:
        """Every file or object under the folder or prefix, as sorted full paths / URIs."""
        prefix = str(prefix)
        if not is_s3(prefix):
            root = Path(prefix)
            if root.is_file():
                return [str(root)]
            if not root.exists():
                return []
            return sorted(str(p) for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
        url = S3Url.parse(prefix)
        out = []
        with self._s3_errors(prefix, "list"):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=url.bucket, Prefix=url.key):
                out += [f"s3://{url.bucket}/{obj['Key']}" for obj in page.get("Contents", [])]
        return sorted(out)

    def delete(self, uri: str) -> None:
        uri = str(uri)
        if not is_s3(uri):
            Path(uri).unlink(missing_ok=True)
            return
        url = S3Url.parse(uri)
        with self._s3_errors(uri, "delete"):
            self.client.delete_object(Bucket=url.bucket, Key=url.key)

    @contextlib.contextmanager
    def local_copy(self, uri: str) -> Iterator[Path]:
        """A local path holding the object's bytes: the file itself when local, else a temp copy."""
        uri = str(uri)
        if not is_s3(uri):
            if not Path(uri).exists():
                raise StorageError(f"{uri}: no such file")
            yield Path(uri)
            return
        suffix = Path(S3Url.parse(uri).key).suffix
        with tempfile.TemporaryDirectory(prefix="loong-") as tmp:
            yield self.download_file(uri, Path(tmp) / f"object{suffix}")
