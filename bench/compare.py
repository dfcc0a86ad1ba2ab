"""Compare commits fairly on a noisy machine: their TTFA benchmarks, interleaved.

Two runs taken minutes apart on a shared machine can differ by a third (other tenants,
CPU frequency), more than most changes under test. This checks out each commit into a
temporary worktree (sharing this checkout's .venv), then runs `bench/run.py` for each in
turn, round after round, so that drift hits all of them alike, and prints the median of
the rounds per commit. Each round begins with the next commit (A B, then B A, …): before
round 16 every round ran them in the same order, and a host that slowed within rounds
put its slower half on the same commit every time.

    .venv/bin/python bench/compare.py 990faf7 HEAD --rounds 3
    .venv/bin/python bench/compare.py 990faf7 HEAD -- --voices tiny --sessions 40
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIGURES = {
    "TTFA p50": ("ttfa", "ttfa", "p50"),
    "overhead p50": ("ttfa", "overhead", "p50"),
    "overhead p99": ("ttfa", "overhead", "p99"),
    "engine p50": ("ttfa", "engine", "p50"),
    "cached TTFA p50": ("cached", "ttfa", "p50"),
    "POST round trip p50": ("ttfa", "post_rtt", "p50"),
    "session frame p50": ("ttfa", "ws_session_frame", "p50"),
    # with --scenarios ...,http: one request at a time
    "GET voices p50": ("http", "GET voices", "p50"),
    "POST new text p50": ("http", "POST new text", "p50"),
    "POST narrated text p50": ("http", "POST narrated text", "p50"),
    # with --scenarios ...,concurrency: sessions posted at once (fairness)
    "burst TTFA p50": ("concurrency", "ttfa_ms", "p50"),
    "burst TTFA p95": ("concurrency", "ttfa_ms", "p95"),
    "burst TTFA max": ("concurrency", "ttfa_ms", "max"),
}


def git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def figures(result: dict, voice: str) -> dict[str, float]:
    out = {}
    for name, (scenario, key, stat) in FIGURES.items():
        value = result.get(scenario, {}).get(voice, {}).get(key, {})
        if isinstance(value, dict) and stat in value:
            out[name] = value[stat]
    throughput = result.get("streaming", {}).get(voice, {}).get("throughput", {})
    for name, key in [
        ("wall / engine p50", "worker_ratio"),
        ("ms per chunk p50", "overhead_per_chunk_ms"),
        ("long text TTFA p50", "ttfa_ms"),
    ]:
        if "p50" in throughput.get(key, {}):  # with --scenarios ...,streaming
            out[name] = throughput[key]["p50"]
    for kind, long in result.get("long", {}).get(voice, {}).items():  # with --scenarios long
        for key in ("ttfa", "overhead"):
            if "p50" in long.get(key, {}):
                out[f"19,000 chars, {kind}: {key} p50"] = long[key]["p50"]
    burst = result.get("concurrency", {}).get(voice, {})
    if "audio_s_per_wall_s" in burst:
        out["burst audio s per wall s"] = burst["audio_s_per_wall_s"]
        out["burst: nothing lost"] = float(burst["nothing_lost"])
    cpu = result.get("ttfa", {}).get(voice, {}).get("cpu_ms_per_session", {})
    for process in ("daphne", "workers"):  # CPU ms per cold session, all its threads
        if process in cpu:
            out[f"CPU ms per session: {process}"] = cpu[process]
    reopen = result.get("cached", {}).get(voice, {}).get("reopen", {})
    if "connect_to_first_frame" in reopen:
        out["reopen p50"] = reopen["connect_to_first_frame"]["p50"]
    return out


def keep_logs(tree: Path, name: str) -> Path | None:
    """Copy a failed run's process logs (daphne, workers) out of its worktree, which goes."""
    runs = sorted((tree / "bench" / "results").glob("*-logs"))
    if not runs:
        return None
    target = ROOT / "bench" / "results" / name
    shutil.copytree(runs[-1], target, dirs_exist_ok=True)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("commits", nargs="+", help="commits to compare (at least two)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--voice", default="en-us", help="the catalog ids to report, comma-separated (en-us)"
    )
    args, bench_args = parser.parse_known_args(argv)
    bench_args = [a for a in bench_args if a != "--"] or [
        "--voices",
        "espeak",
        "--scenarios",
        "ttfa,cached",
        "--sessions",
        "30",
    ]
    if len(args.commits) < 2:
        parser.error("name at least two commits")
    shas = [git("rev-parse", "--short=10", c) for c in args.commits]
    voices = args.voice.split(",")
    samples = {(sha, v): [] for sha in shas for v in voices}
    with tempfile.TemporaryDirectory(prefix="tts-compare-") as tmp:
        trees = {}
        for sha in shas:
            tree = Path(tmp) / sha
            git("worktree", "add", "--detach", str(tree), sha)
            (tree / ".venv").symlink_to(ROOT / ".venv")
            trees[sha] = tree
        try:
            for round_ in range(1, args.rounds + 1):
                # Each round starts with the next commit (A B, B A, … for two): a host that
                # drifts within a round favours none of them.
                order = list(trees.items())
                shift = (round_ - 1) % len(order)
                for sha, tree in order[shift:] + order[:shift]:
                    out = Path(tmp) / f"{sha}-{round_}.json"
                    cmd = [sys.executable, "bench/run.py", *bench_args, "--json", str(out)]
                    done = subprocess.run(cmd, cwd=tree, capture_output=True, text=True)
                    if done.returncode != 0:
                        tail = "\n".join(done.stderr.splitlines()[-30:])
                        kept = keep_logs(tree, f"failed-{sha}-round{round_}")
                        raise SystemExit(f"round {round_} of {sha} failed (logs: {kept}):\n{tail}")
                    result = json.loads(out.read_text())["results"]
                    for voice in voices:
                        figs = samples[sha, voice]
                        figs.append(figures(result, voice))
                        print(f"round {round_} {sha} {voice}: {figs[-1]}", flush=True)
        finally:
            for tree in trees.values():
                git("worktree", "remove", "--force", str(tree))
    extra = [
        "wall / engine p50",
        "ms per chunk p50",
        "long text TTFA p50",
        "reopen p50",
        "CPU ms per session: daphne",
        "CPU ms per session: workers",
        "burst audio s per wall s",
        "burst: nothing lost",
    ]
    for voice in voices:
        mine = {sha: samples[sha, voice] for sha in shas}
        known = [*FIGURES, *extra]
        more = sorted({n for s in mine.values() for f in s for n in f} - set(known))  # long's
        names = [n for n in [*known, *more] if all(n in f for s in mine.values() for f in s)]
        if not names:
            continue
        width = max(len(n) for n in names)
        print(f"\nmedian of {args.rounds} interleaved rounds, ms ({voice})")
        print(" " * width + "".join(f"{sha:>14}" for sha in shas))
        for name in names:
            row = [statistics.median(s[name] for s in mine[sha]) for sha in shas]
            digits = 3 if name.startswith("wall / engine") else 1
            print(f"{name:<{width}}" + "".join(f"{v:>14.{digits}f}" for v in row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
