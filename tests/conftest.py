import os

# Keep DeepSpeed, Ray and torch quiet and inside the project when tests run outside `make`.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from tests.fixtures.s3 import s3_bucket, s3_endpoint, s3_env, s3_storage  # noqa: E402,F401
from tests.fixtures.samples import sample_videos  # noqa: E402,F401

# The longest test files, longest first: `make test` hands files to its xdist workers in collection
# order, and a long file started last would run alone at the end. Order only; every test still runs.
LONGEST_FIRST = ("tests/train/test_two_nodes.py", "tests/jobs/test_quickstart.py",
                 "tests/data_prep/test_pretokenize.py", "tests/reliability/test_bad_input.py",
                 "tests/models/tokenizer/test_model.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable: the rest keep their order
