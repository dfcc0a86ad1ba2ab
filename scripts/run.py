"""`make run`: migrate, load the demo story, make sure Redis is there, start daphne and
one worker, print the URL. Ctrl-C stops everything this started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))

from scripts.stack import PYTHON, ROOT, EmbeddedRedis, Stack, redis_reachable  # noqa: E402


def manage(*args: str, env: dict[str, str]) -> None:
    subprocess.run([PYTHON, "manage.py", *args], cwd=ROOT, env=env, check=True)


def main() -> int:
    env = dict(os.environ)
    redis_url = env.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
    embedded = None
    if not redis_reachable(redis_url):
        embedded = EmbeddedRedis().start()
        env["REDIS_URL"] = embedded.url
        print(f"No Redis at {redis_url}; started an embedded one at {embedded.url}")
    manage("migrate", "--noinput", "-v", "0", env=env)
    manage("load_demo", env=env)
    manage("collectstatic", "--noinput", "-v", "0", env=env)
    port = int(env.get("PORT", "8000"))
    stack = Stack(
        env=env,
        port=port,
        workers=int(env.get("WORKERS", "1")),
        log_dir=None if env.get("QUIET") else None,
    )
    stack._spawn = _inherit_output(stack)  # show server logs in this terminal
    try:
        stack.start()
        print(f"\n  Narrator is running: {stack.base_url}/\n  Press Ctrl-C to stop.\n", flush=True)
        while all(p.poll() is None for p in [stack.daphne, *stack.worker_procs]):
            time.sleep(0.5)
        print("A process exited; stopping.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stack.stop()
        if embedded:
            embedded.stop()


def _inherit_output(stack: Stack):
    def spawn(args: list[str], name: str) -> subprocess.Popen:
        return subprocess.Popen(args, cwd=ROOT, env=stack.env, start_new_session=True)

    return spawn


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    sys.exit(main())
