"""launch_local: ranks start in the launcher's folder and environment of the moment they are
launched (the fork server they come from was started earlier, elsewhere), and a user error in a
rank comes back as one error."""

import json
import os
from pathlib import Path

import pytest

from loong_dist.errors import UserError
from loong_dist.parallel.process_groups import launch_local


def _report(folder: str) -> None:
    seen = {"var": os.environ.get("LOONG_TEST_VAR"), "cwd": os.getcwd(), "world": os.environ["WORLD_SIZE"]}
    Path(folder, f"rank{os.environ['RANK']}.json").write_text(json.dumps(seen))


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
