"""Fault injection for checkpoint writes, for tests only: on PYTHONPATH, this runs at the start of
every Python process of a job (spawned ranks included) and, when LOONG_TEST_SAVE_FAULT is
"<path substring>:<mode>", wraps torch.save so that a save to a matching path writes half of its
bytes, fsyncs them, and then
- mode "hang": touches "<path>.torn" and sleeps (the test kills the process there), or
- mode "enospc": raises OSError(ENOSPC), what a full disk does mid-write.
Nothing in the project imports this; without the variable it does nothing.
"""

import os

_SPEC = os.environ.get("LOONG_TEST_SAVE_FAULT")

if _SPEC:
    import builtins

    _real_import = builtins.__import__

    def _patch(torch) -> None:
        import errno
        import io
        import time

        substring, _, mode = _SPEC.rpartition(":")
        save = torch.save

        def faulty_save(obj, f, *args, **kwargs):
            if not isinstance(f, (str, os.PathLike)) or substring not in str(f):
                return save(obj, f, *args, **kwargs)
            buf = io.BytesIO()
            save(obj, buf, *args, **kwargs)
            data = buf.getvalue()
            with open(f, "wb") as out:
                out.write(data[:len(data) // 2])
                out.flush()
                os.fsync(out.fileno())
            if mode == "enospc":
                raise OSError(errno.ENOSPC, "No space left on device (injected by the test)", str(f))
            open(f"{f}.torn", "w").close()
            while True:
                time.sleep(1)

        torch.save = faulty_save

    def _import(name, *args, **kwargs):
        module = _real_import(name, *args, **kwargs)
        if name == "torch" and not getattr(builtins, "_loong_save_fault", False):
            import sys
            torch = sys.modules.get("torch")
            if torch is not None and hasattr(torch, "save"):
                builtins._loong_save_fault = True
                _patch(torch)
        return module

    builtins.__import__ = _import
