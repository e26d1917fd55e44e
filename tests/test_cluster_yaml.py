"""cluster.yaml is a valid Ray cluster-launcher file that installs this project on every node."""

from pathlib import Path

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]


def test_cluster_yaml_passes_ray_schema():
    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    validate_config(prepare_config(cfg))  # Ray's own JSON-schema check of the launcher file
    assert cfg["provider"]["type"] == "aws"
    assert any("make install" in c and "TORCH_INDEX=" in c for c in cfg["setup_commands"])
    workers = cfg["available_node_types"]["gpu_worker"]["node_config"]
    assert "IamInstanceProfile" in workers  # S3 access for shards and checkpoints
