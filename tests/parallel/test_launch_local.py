"""launch_local: ranks start in the launcher's folder and environment of the moment they are
launched (the fork server they come from was started earlier, elsewhere), rendezvous at a port the
launcher holds from before they start, and a user error in a rank comes back as one error."""

import errno
import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from loong_dist.errors import UserError
from loong_dist.parallel.process_groups import launch_local, one_local_rank, run_ranks_here


def _report(folder: str) -> None:
    seen = {"var": os.environ.get("LOONG_TEST_VAR"), "cwd": os.getcwd(), "world": os.environ["WORLD_SIZE"]}
    Path(folder, f"rank{os.environ['RANK']}.json").write_text(json.dumps(seen))


def _rendezvous(folder: str) -> None:
    with socket.socket() as s:  # the rendezvous port is taken already: by the launcher's store
        try:
            s.bind(("127.0.0.1", int(os.environ["MASTER_PORT"])))
            bound = "free"
        except OSError as e:
            bound = errno.errorcode[e.errno]
    dist.init_process_group("gloo")
    total = torch.ones(1)
    dist.all_reduce(total)
    dist.destroy_process_group()
    Path(folder, f"rank{os.environ['RANK']}.json").write_text(json.dumps({"port": bound, "sum": total.item()}))


def _fail() -> None:
    raise UserError(f"rank {os.environ['RANK']} refuses")


def test_ranks_see_the_launchers_folder_and_environment_at_launch(tmp_path, monkeypatch):
    for i in range(2):
        folder = tmp_path / f"launch{i}"
        folder.mkdir()
        monkeypatch.chdir(folder)
        monkeypatch.setenv("LOONG_TEST_VAR", f"value {i}")
        launch_local(_report, 2, str(folder))
        for rank in range(2):
            seen = json.loads((folder / f"rank{rank}.json").read_text())
            assert seen == {"var": f"value {i}", "cwd": str(folder), "world": "2"}


def test_a_user_error_in_a_rank_is_one_error():
    with pytest.raises(UserError, match="^rank [01] refuses$"):  # whichever rank failed first
        launch_local(_fail, 2)


def test_ranks_rendezvous_at_a_port_the_launcher_bound_before_they_started(tmp_path):
    """A port chosen free and bound later by rank 0 can be taken in between by any process on the
    machine (EADDRINUSE, as a CI run saw): the launcher binds it first and hosts the store, as torchrun
    does, and rank 0 joins as a client. One rank in this process gets the same, and no launcher
    variables are left behind once it is done."""
    launch_local(_rendezvous, 2, str(tmp_path))
    for rank in range(2):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == {"port": "EADDRINUSE", "sum": 2.0}
    (tmp_path / "one").mkdir()
    before = dict(os.environ)
    run_ranks_here(_rendezvous, 1, str(tmp_path / "one"))
    assert json.loads((tmp_path / "one" / "rank0.json").read_text()) == {"port": "EADDRINUSE", "sum": 1.0}
    assert dict(os.environ) == before


def test_one_local_rank_leaves_a_launchers_rank_as_it_is(monkeypatch):
    """Under torchrun or Ray Train (RANK set) the process is one of the launcher's ranks: no store
    of its own, no variables changed."""
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("MASTER_PORT", "29500")
    before = dict(os.environ)
    with one_local_rank():
        assert dict(os.environ) == before
    assert dict(os.environ) == before
