"""The first sessions after the stack starts: what the first reader after a deploy meets.

    python bench/coldstart.py [--voice espeak|tiny|full] [--sessions 6] [--wait-s 1]
    for i in 1 2 3; do python bench/coldstart.py; done     # one fresh stack per run
    python bench/coldstart.py --env TTS_WARM_UP=0          # without the start's warm-up
    python bench/coldstart.py --patch trace                # then bench/trace.py (below)

Starts daphne, two workers and Redis as bench/run.py does (`bench.stack`), waits
``--wait-s`` after they are ready, then, as a reader's browser that has loaded a page
with a player (``/narrate/``, which gives it its session cookie; ``--no-page``: not),
narrates ``--sessions`` short texts one at a time (0.3 s apart) and prints, session by
session, the POST's time to its 201 and the time to the first audio frame, both from
the moment the client sent the POST's bytes (this client is cold too: its first POST
left it 15 to 20 ms after it began). bench/run.py warms the stack up before it
measures; this is the part it leaves out. See docs/benchmarks.md, P85 and P87. With
``--patch trace`` the logs are kept: ``bench/trace.py <logs> --start "client.post >"
--skip 0 --windows 0:1`` is the first session's timeline.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import client, patches, ttfa  # noqa: E402
from bench.stack import VOICE_IDS, BenchStack  # noqa: E402
from bench.texts import TextSource  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voice", choices=sorted(VOICE_IDS), default="espeak")
    parser.add_argument("--sessions", type=int, default=6)
    parser.add_argument("--wait-s", type=float, default=1.0, help="quiet after the start (1)")
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="for the stack"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--no-page",
        action="store_true",
        help="POST without loading a page first: a client with no session cookie, whose "
        "first socket is refused and opened again after the reply (round 34's figures)",
    )
    parser.add_argument(
        "--patch",
        action="append",
        default=[],
        choices=sorted(patches.PATCHES),
        help="a bench-only patch from bench/patches.py in the stack's processes (trace: "
        "each session's steps; the logs are kept, and their folder printed)",
    )
    args = parser.parse_args(argv)
    if args.sessions < 1 or args.wait_s < 0:
        parser.error("--sessions must be at least 1 and --wait-s at least 0")
    if bad := [item for item in args.env if "=" not in item]:
        parser.error(f"--env takes NAME=VALUE, not {bad[0]!r}")

    texts = TextSource()
    run_dir = Path(tempfile.mkdtemp(prefix="tts-coldstart-"))
    bench = BenchStack(
        run_dir=run_dir,
        log_dir=run_dir / "logs",
        voices=(args.voice,),
        extra_env=dict(item.split("=", 1) for item in args.env),
        patches=tuple(args.patch),
    )
    client.TRACE = []  # when each POST's bytes left
    try:
        bench.prepare()
        bench.setup_django()
        bench.start()
        time.sleep(args.wait_s)
        narrations = ttfa.run_sessions(
            bench.port,
            VOICE_IDS[args.voice],
            [texts.short() for _ in range(args.sessions)],
            timeout=120,
            pause_s=0.3,
            page=None if args.no_page else "/narrate/",
        )
    finally:
        bench.stop()
        if args.patch:
            (run_dir / "logs" / "timings").mkdir(parents=True, exist_ok=True)
            trace = run_dir / "logs" / "timings" / "trace-client.json"
            trace.write_text(json.dumps(client.TRACE))
            print(f"logs: {run_dir / 'logs'}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    sent = [t for t, label in client.TRACE if label == "client.sent"]
    if len(sent) != len(narrations):
        raise SystemExit(f"{len(sent)} POSTs traced for {len(narrations)} sessions")
    figures = {
        "voice": VOICE_IDS[args.voice],
        "env": args.env,
        "client_ms": [
            round((s - n.t_post) * 1000, 1) for s, n in zip(sent, narrations, strict=True)
        ],
        "post_ms": [
            round((n.t_created - s) * 1000, 1) for s, n in zip(sent, narrations, strict=True)
        ],
        "ttfa_ms": [
            None
            if n.stream is None or n.stream.t_first is None
            else round((n.stream.t_first - s) * 1000, 1)
            for s, n in zip(sent, narrations, strict=True)
        ],
    }
    print(f"{figures['voice']}, session by session after a start {' '.join(args.env)}")
    print("POST sent -> 201 ms:        ", " / ".join(str(v) for v in figures["post_ms"]))
    print("POST sent -> first audio ms:", " / ".join(str(v) for v in figures["ttfa_ms"]))
    print("client's own ms before it: ", " / ".join(str(v) for v in figures["client_ms"]))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
