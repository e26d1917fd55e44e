import os

# Keep DeepSpeed, Ray and torch quiet and inside the project when tests run outside `make`.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from tests.fixtures.s3 import s3_bucket, s3_endpoint, s3_env, s3_storage  # noqa: E402,F401
from tests.fixtures.samples import sample_videos  # noqa: E402,F401
