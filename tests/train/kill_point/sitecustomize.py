"""A named kill point for tests/train/test_kill_resume.py, for tests only: on PYTHONPATH this runs at
the start of every Python process of a training job (spawned ranks included) and, when
LOONG_TEST_HOLD_AFTER_STEP is "<step>:<marker path>", makes the trainer stop right after it has
logged the metrics line of <step>: it writes the marker (its pid, atomically) and waits there. The
test kills the job when the marker appears, so the kill lands at that step on any machine: the
checkpoints of earlier steps saved and mirrored, no later step started. Nothing in the project
imports this; without the variable it does nothing.
"""

import os

_SPEC = os.environ.get("LOONG_TEST_HOLD_AFTER_STEP")

if _SPEC:
    import importlib.abc
    import importlib.util
    import sys
    import time

    _STEP, _, _MARKER = _SPEC.partition(":")

    def _patch(trainer) -> None:
        log_metrics = trainer.Trainer._log_metrics  # an AttributeError here fails the job loudly

        def log_then_hold(self, stats, metrics):
            log_metrics(self, stats, metrics)
            if stats.step == int(_STEP):
                with open(_MARKER + ".tmp", "w") as f:
                    f.write(str(os.getpid()))
                os.replace(_MARKER + ".tmp", _MARKER)
                while True:
                    time.sleep(1)  # the test kills the process group here

        trainer.Trainer._log_metrics = log_then_hold

    class _PatchTrainerOnImport(importlib.abc.MetaPathFinder):
        """Patches loong_dist.train.trainer once its module has run, before anyone uses it."""

        def find_spec(self, name, path, target=None):
            if name != "loong_dist.train.trainer":
                return None
            sys.meta_path.remove(self)
            try:
                spec = importlib.util.find_spec(name)
            finally:
                sys.meta_path.insert(0, self)
            run_module = spec.loader.exec_module

            def run_and_patch(module):
                run_module(module)
                _patch(module)

            spec.loader.exec_module = run_and_patch
            return spec

    sys.meta_path.insert(0, _PatchTrainerOnImport())
