"""Storage over local paths and a real S3 HTTP server on 127.0.0.1 (moto), never a boto3 mock."""

import pytest

from loong_dist.config import StorageConfig
from loong_dist.errors import StorageError, StorageUnavailable
from loong_dist.io.storage import S3Url, Storage, join, parent
from tests.fixtures.fault_proxy import FaultProxy


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    """The same tests run on a local folder and on a bucket of the S3 server fixture."""
    if request.param == "local":
        return Storage(), str(tmp_path / "store")
    storage = request.getfixturevalue("s3_storage")
    return storage, request.getfixturevalue("s3_bucket") + "/prefix"


def test_write_read_list_exists_delete(root):
    store, base = root
    a, b = join(base, "a.bin"), join(base, "sub", "b.txt")
    assert not store.exists(a)
    store.write_bytes(a, b"\x00\x01payload")
    store.write_text(b, "héllo")
    assert store.exists(a) and store.read_bytes(a) == b"\x00\x01payload"
    assert store.read_text(b) == "héllo"
    assert store.list(base) == sorted([a, b])
    with store.open_read(a) as f:
        assert f.read() == b"\x00\x01payload"
    store.delete(a)
    assert not store.exists(a) and store.list(base) == [b]


def test_missing_object_names_uri(root):
    store, base = root
    with pytest.raises(StorageError, match=r"nothing\.bin: no such (file|object)"):
        store.read_bytes(join(base, "nothing.bin"))


def test_failed_write_leaves_no_partial_object(root):
    store, base = root
    target = join(base, "shard.tar")
    store.write_bytes(target, b"old complete version")
    with pytest.raises(RuntimeError):
        with store.open_write(target) as f:
            f.write(b"half of a new vers")
            raise RuntimeError("writer died")
    assert store.read_bytes(target) == b"old complete version"
    assert store.list(base) == [target]  # no temporary file left visible


def test_large_object_goes_multipart(s3_storage, s3_bucket, tmp_path):
    store = Storage(StorageConfig(multipart_chunk_mb=5))
    data = bytes(range(256)) * (11 * 1024 * 1024 // 256)  # 11 MiB -> 3 parts
    uri = f"{s3_bucket}/big.bin"
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    store.upload_file(src, uri)
    head = store.client.head_object(Bucket=S3Url.parse(uri).bucket, Key="big.bin")
    assert head["ETag"].strip('"').endswith("-3")  # a multipart object
    assert store.download_file(uri, tmp_path / "back.bin").read_bytes() == data


def test_endpoint_from_env_and_config(s3_env, s3_bucket):
    assert Storage().endpoint == s3_env  # AWS_ENDPOINT_URL, boto3's standard variable
    assert Storage(StorageConfig(endpoint_url=s3_env)).endpoint == s3_env


def test_bad_bucket_and_unreachable_endpoint(s3_storage, s3_env, monkeypatch):
    with pytest.raises(StorageError, match="s3://no-such-bucket-here: bucket does not exist"):
        s3_storage.check_bucket("s3://no-such-bucket-here/x")
    with pytest.raises(StorageError, match="not a valid S3 bucket name"):
        s3_storage.read_bytes("s3://ab/x")
    dead = Storage(StorageConfig(endpoint_url="http://127.0.0.1:9", max_attempts=2, connect_timeout_s=1))
    with pytest.raises(StorageError) as e:
        dead.check_bucket("s3://some-bucket/x")
    message = str(e.value)
    assert "cannot reach the S3 endpoint http://127.0.0.1:9" in message and "\n" not in message
    assert "AKIA" not in message and "secret" not in message.lower()


def test_store_down_is_told_apart_from_a_missing_object(s3_env, s3_bucket, tmp_path):
    """S3 refusing, dropping or failing requests (5xx, throttling) raises StorageUnavailable - retry
    later, nothing is known of the object - on every kind of call, uploads included; a missing object
    is a plain StorageError, a fact about the object."""
    Storage().write_bytes(f"{s3_bucket}/a.bin", b"payload")
    src = tmp_path / "src.bin"
    src.write_bytes(b"new")
    for fault in ("drop", "500", "503"):
        proxy = FaultProxy(s3_env, rate=1.0, faults=(fault,)).start()
        store = Storage(StorageConfig(endpoint_url=proxy.url, max_attempts=1))
        calls = {"read": lambda: store.read_bytes(f"{s3_bucket}/a.bin"),
                 "exists": lambda: store.exists(f"{s3_bucket}/a.bin"),
                 "download": lambda: store.download_file(f"{s3_bucket}/a.bin", tmp_path / "a.bin"),
                 "write": lambda: store.write_bytes(f"{s3_bucket}/b.bin", b"new"),
                 "upload": lambda: store.upload_file(src, f"{s3_bucket}/b.bin"),
                 "list": lambda: store.list(f"{s3_bucket}/")}
        try:
            for name, call in calls.items():
                with pytest.raises(StorageUnavailable) as e:
                    call()
                assert "\n" not in str(e.value) and s3_bucket in str(e.value), (fault, name, str(e.value))
        finally:
            proxy.stop()
    with pytest.raises(StorageError, match="no such object") as e:
        Storage(StorageConfig(max_attempts=1)).read_bytes(f"{s3_bucket}/missing.bin")
    assert not isinstance(e.value, StorageUnavailable)


def test_paths():
    assert join("s3://b/p/", "x", "/y") == "s3://b/p/x/y"
    assert parent("s3://b/p/x.tar") == "s3://b/p"
    assert join("/a", "b") == "/a/b"
