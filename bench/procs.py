"""Entry points for daphne and a worker with bench-only patches and profiling loaded first.

    python -m bench.procs daphne <daphne arguments>
    python -m bench.procs worker

BENCH_PATCHES: comma-separated names from bench/patches.py. BENCH_PROFILE_DIR: cProfile
each worker's ``services.session_run`` (the thread that runs it) into
``<dir>/worker-<pid>.prof``, rewritten after every call.
"""

from __future__ import annotations

import cProfile
import functools
import os
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _profile_session_run(directory: Path) -> None:
    from tts import services

    profiler, lock = cProfile.Profile(), threading.Lock()
    original = services.session_run
    path = directory / f"worker-{os.getpid()}.prof"

    @functools.wraps(original)
    def profiled(**kwargs):
        with lock:
            profiler.enable()
            try:
                return original(**kwargs)
            finally:
                profiler.disable()
                profiler.dump_stats(path.with_suffix(".tmp"))
                os.replace(path.with_suffix(".tmp"), path)  # never a half-written file

    services.session_run = profiled


def main() -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    role, rest = sys.argv[1], sys.argv[2:]
    os.environ["BENCH_ROLE"] = role  # for the patches (bench.patches.in_worker)
    if role == "daphne":  # as tts.serve does, before daphne makes its loop
        from tts import loops  # (a worker's runworker installs its own)

        loops.install_uvloop()
    import django

    django.setup()
    from bench.patches import apply

    apply([p for p in os.environ.get("BENCH_PATCHES", "").split(",") if p])
    if role == "daphne":  # tts.serve's daphne, with the patches in place
        from tts import serve

        sys.argv = ["tts.serve", *rest]
        serve.main()
    elif role == "worker":
        if directory := os.environ.get("BENCH_PROFILE_DIR"):
            _profile_session_run(Path(directory))
        from django.core.management import execute_from_command_line

        execute_from_command_line(["manage.py", "runworker", "tts-generate"])
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main()
