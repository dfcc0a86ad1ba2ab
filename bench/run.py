"""Benchmark the real stack on loopback: daphne, narration workers, Redis, a database.

    make bench                          # everything: ~5 min on a quiet 2-core machine
    .venv/bin/python bench/run.py --quick
    .venv/bin/python bench/run.py --voices espeak,tiny --scenarios ttfa,cached
    .venv/bin/python bench/run.py --database-url postgres://postgres@127.0.0.1:5432/postgres

Voices: espeak (espeak-ng en-us), tiny (a ~1 MB random-weight Coqui VITS) and full (a
full-size random-weight Coqui VITS: the compute of a real voice). Scenarios, in run order:
memory, ttfa, long (TTFA of 19,000-character texts), cached, http, flows, streaming
(blocking baseline + throughput), fanout, concurrency; and, only when named, before (P81).
Prints a table and writes bench/results/<timestamp>.json (and --json PATH).
See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import (  # noqa: E402
    ab,
    client,
    concurrency,
    fanout,
    memory,
    proxies,
    roundtrips,
    sound,
    streaming,
    ttfa,
)
from bench.cpu import CpuMeter  # noqa: E402
from bench.monitor import ForeignLoad  # noqa: E402
from bench.netdelay import Link, proxy_thread  # noqa: E402
from bench.report import Row, fmt, machine, table, write_json  # noqa: E402
from bench.stack import VOICE_IDS, BenchStack  # noqa: E402
from bench.texts import REFERENCE_TEXT, TextSource  # noqa: E402
from scripts.stack import free_port  # noqa: E402

SCENARIOS = (
    "memory",
    "ttfa",
    "long",
    "cached",
    "http",
    "flows",
    "streaming",
    "fanout",
    "concurrency",
    "sound",
)
# Run only when named in --scenarios.
EXTRA_SCENARIOS = ("before",)
RESULTS = ROOT / "bench" / "results"
SHORT_TIMEOUT = {"espeak": 60.0, "tiny": 60.0, "full": 300.0}
LONG_TIMEOUT = {"espeak": 120.0, "tiny": 120.0, "full": 900.0}


def count(text: str, *, least: int = 1) -> int:
    """An argparse type: a whole number of at least ``least``."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
    return value


def threads(text: str) -> int:
    """An argparse type: a count of threads, 0 for the library's default."""
    return count(text, least=0)


def number(
    low: float, high: float = float("inf"), *, above: bool = False
) -> Callable[[str], float]:
    """An argparse type: a number from ``low`` (or ``above`` it) to ``high``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if (value <= low if above else value < low) or value > high:
            span = f"more than {low:g}" if above else f"at least {low:g}"
            span += f" and at most {high:g}" if high != float("inf") else ""
            raise argparse.ArgumentTypeError(f"must be {span}, got {text}")
        return value

    return parse


minutes = number(0, above=True)
megabits = number(0.1, 100_000)


def counts(text: str) -> tuple[int, ...]:
    """An argparse type: comma-separated whole numbers of at least 1 (none: '')."""
    return tuple(count(part.strip()) for part in text.split(",") if part.strip())


def round_trips(text: str) -> list[float]:
    """An argparse type: one or more comma-separated round trips, 0 to 10,000 ms."""
    parse = number(0, 10_000)
    values = [parse(part.strip()) for part in text.split(",") if part.strip()]
    if not values:
        raise argparse.ArgumentTypeError("give one or more round trips, ms")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]),
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="small counts, espeak and tiny only (about 1.5 minutes)",
    )
    p.add_argument("--voices", help="comma-separated: espeak,tiny,full (default: all)")
    p.add_argument(
        "--scenarios",
        help=f"comma-separated of {','.join(SCENARIOS)} (default: all of those); "
        f"also {','.join(EXTRA_SCENARIOS)}, run only when named",
    )
    p.add_argument("--sessions", type=count, help="TTFA and cached sessions per voice (50)")
    p.add_argument(
        "--full-sessions",
        type=count,
        help="TTFA and cached sessions for the full-size VITS (50, as the others: 3 to 5 s each)",
    )
    p.add_argument(
        "--idle-sessions",
        type=lambda text: count(text, least=0),
        help="TTFA sessions per voice that each follow IDLE_S of a quiet stack, as a "
        "reader's press usually does (20, --quick 3; the full VITS: at most 10; 0: none)",
    )
    p.add_argument(
        "--idle-s",
        type=number(0, 60),
        default=1.0,
        help="seconds the stack is left idle before each of those sessions (1)",
    )
    p.add_argument(
        "--long-sessions",
        type=count,
        help="long: 19,000-character sessions per fast voice and kind of text (15)",
    )
    p.add_argument(
        "--long-repeats",
        type=count,
        help="~2,000-character sessions per fast voice (9; the full VITS: 1)",
    )
    p.add_argument(
        "--rtt-ms",
        type=round_trips,
        default=[0.0, 20.0, 80.0],
        help="flows: network round trips to add, ms (0,20,80; bench/netdelay.py)",
    )
    p.add_argument(
        "--link-mbit",
        type=megabits,
        help="flows, and fanout and sound with --path-rtt-ms: the path's bandwidth, Mbit/s, "
        "with TCP's slow start on every round trip (bench/netdelay.py; default: an ideal link)",
    )
    p.add_argument(
        "--link-no-idle-restart",
        action="store_true",
        help="--link-mbit's path keeps its window when idle (a server with "
        "net.ipv4.tcp_slow_start_after_idle=0)",
    )
    p.add_argument(
        "--path-rtt-ms",
        type=number(0, 10_000),
        default=0.0,
        help="fanout's listeners and sound's browser on a network path of this round trip, "
        "ms, over --link-mbit if given (0: loopback)",
    )
    p.add_argument(
        "--sound-whole-chunks",
        action="store_true",
        help="sound: the player's sockets without ?parts=1, each chunk's audio in one frame "
        "(to compare with the player as it ships)",
    )
    p.add_argument(
        "--sound-hover-ms",
        type=number(0, 10_000),
        default=0.0,
        help="sound: the pointer rests on Play this long before each press; the player opens "
        "the socket as it comes (0: the press follows at once, so the socket opens "
        "milliseconds before the POST, as good as with it)",
    )
    p.add_argument(
        "--sound-read-s",
        type=number(0, 600),
        default=0.0,
        help="sound: the reader reads this long after the page loaded before the pointer "
        "comes onto Play (with --path-idle-close-s: the page's connection closed meanwhile)",
    )
    p.add_argument(
        "--path-idle-close-s",
        type=number(0, 600),
        default=0.0,
        help="sound, on --path-rtt-ms's path: an HTTP connection idle this long is closed, "
        "as a proxy's keep-alive timeout closes it (0: never)",
    )
    p.add_argument(
        "--path-tls",
        action="store_true",
        help="sound, on --path-rtt-ms's path: the browser reaches daphne over TLS (https, "
        "wss; a throwaway certificate), each new connection's handshake a round trip more",
    )
    p.add_argument(
        "--path-tls-proxy",
        choices=proxies.KINDS,
        default="daphne",
        help="with --path-tls: what terminates TLS: daphne itself, or nginx (the "
        "configuration in docs/deployment.md) or caddy (as docker-compose.yml runs it) before it",
    )
    p.add_argument(
        "--nginx-ssl-buffer-size",
        help="with --path-tls-proxy nginx: its ssl_buffer_size (nginx's default 16k)",
    )
    p.add_argument(
        "--sound-no-connection-warm",
        action="store_true",
        help="sound: the player's GET that readies the POST's connection (?warm=1, P88) "
        "answered in the page without reaching the server: the player before P88",
    )
    p.add_argument(
        "--sound-first-visit",
        action="store_true",
        help="sound: each session in a new browser context, as a new visitor's first Play "
        "(P86; with --env TTS_SESSION_ON_PAGE=0 its socket opens after the POST's reply)",
    )
    p.add_argument(
        "--sound-play-through",
        action="store_true",
        help="sound: let each narration play to its end and count the player's underruns "
        "(gaps a reader hears)",
    )
    p.add_argument("--listeners", type=counts, help="fan-out listener counts (1,10,100)")
    p.add_argument("--concurrent", type=count, default=20, help="sessions posted at once (20)")
    p.add_argument("--memory-sessions", type=count, help="sessions for worker RSS growth (500)")
    p.add_argument(
        "--memory-checkpoints",
        type=counts,
        default="100,250",
        help="more session counts at which to read worker RSS, to see whether growth "
        "levels off (100,250; none: '')",
    )
    p.add_argument("--idle-sockets", type=count, help="idle sockets for daphne memory (200)")
    p.add_argument(
        "--sound-sessions",
        type=count,
        help="sound: browser sessions per fast voice and kind of press (20)",
    )
    p.add_argument("--workers", type=count, default=2)
    p.add_argument(
        "--torch-threads",
        type=threads,
        default=0,
        help="TTS_TORCH_THREADS for the workers and the baseline (0: torch default)",
    )
    p.add_argument(
        "--full-threads",
        type=threads,
        help="TTS_COQUI_TORCH_THREADS: the full-size voice's own synthesis threads, in the "
        "workers and its baseline (default: one per core, P82; 0: --torch-threads's)",
    )
    p.add_argument(
        "--database-url",
        help="default: SQLite in a temporary folder; a "
        "postgres:// URL gets a fresh database, dropped afterwards",
    )
    p.add_argument(
        "--redis-url",
        help="default: a private embedded Redis; with a URL, a unique channel-layer prefix",
    )
    p.add_argument(
        "--patch",
        action="append",
        default=[],
        help="a bench-only experiment from bench/patches.py (repeatable)",
    )
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for the stack's processes, e.g. DATABASE_CONN_MAX_AGE=60 (repeatable)",
    )
    p.add_argument(
        "--ab",
        action="store_true",
        help="paired A/B of the --patch experiments: sessions alternate off/on (bench/ab.py)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="cProfile the workers' session_run; .prof files in the logs folder",
    )
    p.add_argument(
        "--max-minutes",
        type=minutes,
        default=20.0,
        help="skip scenarios that would start after this (20)",
    )
    p.add_argument("--json", type=Path, help="also write the JSON here")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = p.parse_args(argv)
    q = args.quick
    args.voices = tuple((args.voices or ("espeak,tiny" if q else "espeak,tiny,full")).split(","))
    args.scenarios = tuple((args.scenarios or ",".join(SCENARIOS)).split(","))
    for name in args.voices:
        if name not in VOICE_IDS:
            p.error(f"unknown voice {name!r}; known: {', '.join(VOICE_IDS)}")
    for name in args.scenarios:
        if name not in (*SCENARIOS, *EXTRA_SCENARIOS):
            known = ", ".join((*SCENARIOS, *EXTRA_SCENARIOS))
            p.error(f"unknown scenario {name!r}; known: {known}")
    if args.ab and not args.patch:
        p.error("--ab needs at least one --patch")
    if args.link_no_idle_restart and not args.link_mbit:
        p.error("--link-no-idle-restart needs --link-mbit")
    if args.path_idle_close_s and not args.path_rtt_ms:
        p.error("--path-idle-close-s needs --path-rtt-ms (the path whose connections close)")
    if args.path_tls and not args.path_rtt_ms:
        p.error("--path-tls needs --path-rtt-ms (the path the browser takes)")
    if args.path_tls_proxy != "daphne" and not args.path_tls:
        p.error("--path-tls-proxy needs --path-tls")
    if args.nginx_ssl_buffer_size is not None and args.path_tls_proxy != "nginx":
        p.error("--nginx-ssl-buffer-size needs --path-tls-proxy nginx")
    args.nginx_ssl_buffer_size = args.nginx_ssl_buffer_size or "16k"
    if not re.fullmatch(r"[1-9][0-9]{0,5}[km]?", args.nginx_ssl_buffer_size):
        p.error("--nginx-ssl-buffer-size is nginx's size, such as 4k or 16k")
    if args.path_tls and (why := proxies.missing(args.path_tls_proxy)):
        p.error(why)
    if args.path_tls and args.path_idle_close_s:
        # The proxy tells a WebSocket from an HTTP connection by its upgrade, which TLS hides.
        p.error("--path-tls and --path-idle-close-s cannot be combined")
    args.sessions = args.sessions or (15 if q else 50)
    args.full_sessions = args.full_sessions or (2 if q else 50)
    if args.full_threads is None:
        args.full_threads = os.cpu_count() or 1
    if args.idle_sessions is None:
        args.idle_sessions = 3 if q else 20
    # Nine: about one espeak session in three holds SQLite's WAL checkpoint (10 ms and
    # more), and the median of three was a lottery over which (docs/benchmarks.md).
    args.long_repeats = args.long_repeats or (1 if q else 9)
    args.long_sessions = args.long_sessions or (3 if q else 15)
    args.listeners = list(args.listeners or (1, 10, 100))
    args.memory_sessions = args.memory_sessions or (60 if q else 500)
    args.idle_sockets = args.idle_sockets or (50 if q else 200)
    args.sound_sessions = args.sound_sessions or (3 if q else 20)
    return args


@dataclass
class Context:
    args: argparse.Namespace
    bench: BenchStack
    deadline: float
    texts: TextSource = field(default_factory=TextSource)
    results: dict = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    narrated: dict = field(default_factory=dict)  # voice -> cold TTFA narrations
    coqui_on_gpu: bool = False  # the workers' Coqui voices run on a GPU

    @property
    def link(self) -> Link | None:
        """The modelled network path of --link-mbit, if any."""
        if not self.args.link_mbit:
            return None
        return Link(self.args.link_mbit, idle_restart=not self.args.link_no_idle_restart)

    @property
    def path(self) -> str:
        """--path-rtt-ms's path (fan-out, sound), for a row's name ('' on loopback)."""
        if not self.args.path_rtt_ms:
            return ""
        link = f" {self.link.label}" if self.link else ""
        return f", path {self.args.path_rtt_ms:g} ms{link}"

    @property
    def port(self) -> int:
        return self.bench.port

    def voices(self, *, fast_only: bool = False) -> list[str]:
        return [v for v in self.args.voices if not (fast_only and v == "full")]

    def count(self, voice: str) -> int:
        return self.args.full_sessions if voice == "full" else self.args.sessions

    def row(self, *args, **kwargs) -> None:
        self.rows.append(Row(*args, **kwargs))

    def cpu_meter(self) -> CpuMeter:
        """A meter counting from now."""
        redis = self.bench.redis.process.pid if self.bench.redis else None
        return CpuMeter(self.bench.daphne_pid, self.bench.worker_pids, redis)


def cpu_row(ctx: Context, name: str, voice: str, cpu: dict[str, float]) -> None:
    """CPU per session by process, against the cores' share of a session's wall time."""
    roles = [r for r in ("client", "daphne", "workers", "engine processes", "redis") if r in cpu]
    ctx.row(
        name,
        voice,
        "CPU ms per session: " + " / ".join(roles) + "; all (wall)",
        " / ".join(fmt(cpu[r]) for r in roles) + f"; {fmt(cpu['all'])} ({fmt(cpu['wall'])})",
    )


# Scenarios ---------------------------------------------------------------------------------


def scenario_ttfa(ctx: Context) -> None:
    out = ctx.results.setdefault("ttfa", {})
    for voice in ctx.voices():
        texts = [ctx.texts.short() for _ in range(ctx.count(voice))]
        meter = ctx.cpu_meter()
        narrations = ttfa.run_sessions(
            ctx.port, VOICE_IDS[voice], texts, timeout=SHORT_TIMEOUT[voice]
        )
        cpu = meter.per_session_ms(len(texts))
        ctx.narrated[voice] = narrations
        res = out[VOICE_IDS[voice]] = ttfa.analyse(narrations)
        res["cpu_ms_per_session"] = cpu
        label, n = VOICE_IDS[voice], res["sessions"]
        t, e, o = res["ttfa"], res["engine"], res["overhead"]
        ctx.row(
            f"1 TTFA cold (n={n})",
            label,
            "TTFA p50 / p95 / p99 ms",
            f"{fmt(t['p50'])} / {fmt(t['p95'])} / {fmt(t['p99'])}",
        )
        ctx.row(
            f"1 TTFA cold (n={n})",
            label,
            "engine first segment p50 / p99 ms",
            f"{fmt(e['p50'])} / {fmt(e['p99'])}",
        )
        ctx.row(
            f"1 TTFA cold (n={n})",
            label,
            "pipeline overhead p50 / p99 ms",
            f"{fmt(o['p50'])} / {fmt(o['p99'])}",
            "<= 10 / <= 30",
            o["p50"] <= 10 and o["p99"] <= 30,
        )
        held = res["held_player"]
        ctx.row(
            f"1 TTFA cold (n={n})",
            label,
            "held by cushion_ms: first sound p50 / p99 ms; hold p50 ms; late chunks",
            f"{fmt(held['first_sound']['p50'])} / {fmt(held['first_sound']['p99'])}; "
            f"{fmt(held['hold']['p50'])}; {held['late_chunks']}",
        )
        cpu_row(ctx, f"1 TTFA cold (n={n})", label, cpu)
        idle_ttfa(ctx, voice)


def idle_ttfa(ctx: Context, voice: str) -> None:
    """Scenario 1 again, each session after the stack has been idle --idle-s: the press
    of a reader who came to the page a while ago. Back to back, every process on the path
    has just run; after an idle second each step takes longer (P81), as after the
    full-size voice's own second of synthesis, which every one of its sessions in the
    main row follows."""
    count = ctx.args.idle_sessions
    if voice == "full":
        count = min(count, 10)
    if not count:
        return
    texts = [ctx.texts.short() for _ in range(count)]
    narrations = ttfa.run_sessions(
        ctx.port,
        VOICE_IDS[voice],
        texts,
        timeout=SHORT_TIMEOUT[voice],
        pause_s=ctx.args.idle_s,
        pause_first=True,
    )
    res = ctx.results["ttfa"][VOICE_IDS[voice]]["after_idle"] = ttfa.analyse(narrations)
    res["idle_s"] = ctx.args.idle_s
    t, o = res["ttfa"], res["overhead"]
    ctx.row(
        f"1 TTFA after {ctx.args.idle_s:g} s idle (n={res['sessions']})",
        VOICE_IDS[voice],
        "TTFA p50; pipeline overhead p50 / p99 ms",
        f"{fmt(t['p50'])}; {fmt(o['p50'])} / {fmt(o['p99'])}",
    )


def scenario_before(ctx: Context) -> None:
    """What comes before a session (P81; only when named): espeak right after espeak, and
    right after a full-size session; a full-size session right after two espeak ones,
    to set beside scenario 1's, each of which follows a full-size one. --idle-sessions
    rounds of four sessions: espeak, espeak, full-size, espeak."""
    if "espeak" not in ctx.args.voices or "full" not in ctx.args.voices:
        ctx.notes.append("before: needs the espeak and full voices")
        return
    espeak, full = VOICE_IDS["espeak"], VOICE_IDS["full"]
    order = [("espeak", espeak), ("after espeak", espeak), ("full", full), ("after full", espeak)]

    async def go() -> dict[str, list[client.Narration]]:
        http = client.Http("127.0.0.1", ctx.port)
        await http.ensure_csrf()
        out: dict[str, list[client.Narration]] = {}
        for _ in range(max(ctx.args.idle_sessions, 1)):
            for name, voice in order:
                timeout = SHORT_TIMEOUT["full" if voice == full else "espeak"]
                n = await client.narrate(http, ctx.texts.short(), voice, timeout=timeout)
                out.setdefault(name, []).append(n)
        return out

    runs = asyncio.run(go())
    out = ctx.results["before"] = {name: ttfa.analyse(runs[name]) for name in runs}
    n = len(runs["full"])
    name = f"1 TTFA, what came before (n={n})"
    o = {key: out[key]["overhead"] for key in out}
    ctx.row(
        name,
        espeak,
        "pipeline overhead p50 / p99 ms: after espeak; after a full-size session",
        f"{fmt(o['after espeak']['p50'])} / {fmt(o['after espeak']['p99'])}; "
        f"{fmt(o['after full']['p50'])} / {fmt(o['after full']['p99'])}",
    )
    ctx.row(
        name,
        full,
        "pipeline overhead p50 / p99 ms after two espeak sessions",
        f"{fmt(o['full']['p50'])} / {fmt(o['full']['p99'])}",
    )


# A long text's kinds: plain prose (the plain path cuts it) and prose naming people by
# initials (every paragraph goes to pysbd).
LONG_TEXTS: dict[str, Callable[[TextSource], str]] = {
    "plain": lambda source: source.long(19_000),
    "initials (pysbd)": lambda source: source.named(19_000),
}


def scenario_long(ctx: Context) -> None:
    """TTFA of 19,000-character texts (a long scene, under the limit of 20,000), one
    session at a time, each cancelled once its second chunk arrived (the first is stored
    by then). The kinds alternate, so that the hour's drift hits both alike. The full-size
    VITS is left out: its first segment takes far longer than any cut."""
    out = ctx.results.setdefault("long", {})
    for voice in ctx.voices(fast_only=True):
        kinds = list(LONG_TEXTS)
        texts = [
            (kind, LONG_TEXTS[kind](ctx.texts))
            for _ in range(ctx.args.long_sessions)
            for kind in kinds
        ]
        narrations = ttfa.run_sessions(
            ctx.port,
            VOICE_IDS[voice],
            [text for _, text in texts],
            timeout=LONG_TIMEOUT[voice],
            cancel_after=2,
            pause_s=0.3,
        )
        label = VOICE_IDS[voice]
        for kind in kinds:
            mine = [n for (k, _), n in zip(texts, narrations, strict=True) if k == kind]
            res = out.setdefault(label, {})[kind] = ttfa.analyse(mine)
            t, o = res["ttfa"], res["overhead"]
            ctx.row(
                f"1d TTFA, 19,000 chars (n={res['sessions']})",
                label,
                f"{kind}: TTFA p50 / p99; overhead p50 / p99 ms",
                f"{fmt(t['p50'])} / {fmt(t['p99'])}; {fmt(o['p50'])} / {fmt(o['p99'])}",
            )


def scenario_cached(ctx: Context) -> None:
    out = ctx.results.setdefault("cached", {})
    for voice in ctx.voices():
        cold = ctx.narrated.get(voice)
        if cold is None:  # narrate once first, so that the audio is in the cache
            texts = [ctx.texts.short() for _ in range(ctx.count(voice))]
            cold = ttfa.run_sessions(
                ctx.port, VOICE_IDS[voice], texts, timeout=SHORT_TIMEOUT[voice]
            )
        meter = ctx.cpu_meter()
        again = ttfa.run_sessions(
            ctx.port, VOICE_IDS[voice], [n.text for n in cold], timeout=SHORT_TIMEOUT[voice]
        )
        cpu = meter.per_session_ms(len(cold))
        res = ttfa.analyse(again, cached=True)
        res["cpu_ms_per_session"] = cpu
        res["reopen"] = ttfa.run_reopen(ctx.port, again, timeout=SHORT_TIMEOUT[voice])
        out[VOICE_IDS[voice]] = res
        t, r = res["ttfa"], res["reopen"]["connect_to_first_frame"]
        name = f"4 cached replay (n={res['sessions']})"
        ctx.row(
            name,
            VOICE_IDS[voice],
            "same text, new session: TTFA p50 / p99 ms",
            f"{fmt(t['p50'])} / {fmt(t['p99'])}",
            "p50 <= 15",
            t["p50"] <= 15,
        )
        cpu_row(ctx, name, VOICE_IDS[voice], cpu)
        ctx.row(
            name, VOICE_IDS[voice], "reopen finished session: connect->audio p50 ms", fmt(r["p50"])
        )


def scenario_http(ctx: Context) -> None:
    """1c: one request at a time, no socket beside it (the first voice only)."""
    voice = ctx.voices()[0]
    cold = ctx.narrated.get(voice) or []
    narrated = [n.text for n in cold if n.stream and n.stream.done][: ctx.args.sessions]
    if not narrated:  # narrate some first (one at a time), so that the POSTs replay them
        texts = [ctx.texts.short() for _ in range(min(ctx.args.sessions, 20))]
        cold = ttfa.run_sessions(ctx.port, VOICE_IDS[voice], texts, timeout=SHORT_TIMEOUT[voice])
        narrated = [n.text for n in cold if n.stream and n.stream.done]
    new = [ctx.texts.short() for _ in range(ctx.args.sessions)]
    res = ctx.results.setdefault("http", {})[VOICE_IDS[voice]] = roundtrips.run(
        ctx.port, VOICE_IDS[voice], new, narrated
    )
    for figure, times in res.items():
        ctx.row(
            f"1c HTTP round trip (n={times['n']})",
            VOICE_IDS[voice],
            f"{figure} p50 / p99 ms",
            f"{fmt(times['p50'])} / {fmt(times['p99'])}",
        )


def _baseline_engine(ctx: Context, voice: str):
    if voice == "espeak":
        return "espeak", None
    return "coqui", ctx.bench.models[voice]


def scenario_flows(ctx: Context) -> None:
    """1b: the socket opened with the POST (?pending=1, the player's flow) or after its
    reply, on loopback and over simulated network round trips."""
    out = ctx.results.setdefault("flows", {})
    for voice in ctx.voices(fast_only=True):
        res = out[VOICE_IDS[voice]] = ttfa.run_flows(
            ctx.port,
            VOICE_IDS[voice],
            ctx.texts.short,
            rtt_ms=ctx.args.rtt_ms,
            link=ctx.link,
            per_cell=max(1, ctx.count(voice) // 10),
            rounds=3,
            timeout=SHORT_TIMEOUT[voice],
        )
        ctx.row(
            "1b socket flows",
            VOICE_IDS[voice],
            "first chunk's PCM p50 / p95 KB (what a path's slow start has to carry)",
            f"{fmt(res['first_chunk_kb']['p50'])} / {fmt(res['first_chunk_kb']['p95'])}",
        )
        for key, flows in res["paths"].items():
            late, early = flows["after the reply"], flows["early"]
            ctx.row(
                f"1b socket flow, {key} (n={early['n']})",
                VOICE_IDS[voice],
                "TTFA p50: socket after the reply / with the POST; saved",
                f"{fmt(late['p50'])} / {fmt(early['p50'])}; {fmt(late['p50'] - early['p50'])}",
            )
            parts = flows["early, parts"]
            ctx.row(
                f"1b socket flow, {key} (n={parts['n']})",
                VOICE_IDS[voice],
                "TTFA p50: with the POST, each chunk whole / in parts (?parts=1); saved",
                f"{fmt(early['p50'])} / {fmt(parts['p50'])}; {fmt(early['p50'] - parts['p50'])}",
            )
            warm = flows["warm, parts"]
            ctx.row(
                f"1b socket flow, {key} (n={warm['n']})",
                VOICE_IDS[voice],
                "TTFA p50: in parts, socket with the POST / before it (warm); saved",
                f"{fmt(parts['p50'])} / {fmt(warm['p50'])}; {fmt(parts['p50'] - warm['p50'])}",
            )


def scenario_sound(ctx: Context) -> None:
    """1e: a press on a scene page's Play to the first sample scheduled, in Chromium."""
    if (why := sound.available()) is not None:
        ctx.notes.append(f"sound: skipped, {why}")
        return
    out = ctx.results.setdefault("sound", {})
    n = ctx.args.sound_sessions
    for voice in ctx.voices(fast_only=True):
        label = VOICE_IDS[voice]
        # The first session gives the browser its session cookie (its socket then opens
        # with the POST) and warms the page's code; it is left out. The kinds alternate.
        # --sound-first-visit: every session in a browser context of its own, with no
        # cookie (the page gives it one unless TTS_SESSION_ON_PAGE is off, P86).
        kinds = ["tap"] + [sound.KINDS[i % 2] for i in range(2 * n)]
        paths = sound.make_scenes([ctx.texts.short() for _ in kinds], label, voice)
        with contextlib.ExitStack() as stack:
            base_url = ctx.bench.base_url
            if ctx.path:  # the browser on a modelled network path
                port = stack.enter_context(
                    proxy_thread(
                        ctx.bench.tls_port or ctx.port,
                        ctx.args.path_rtt_ms,
                        ctx.link,
                        idle_close_s=ctx.args.path_idle_close_s,
                    )
                )
                scheme = "https" if ctx.bench.tls_port else "http"
                base_url = f"{scheme}://127.0.0.1:{port}"
            whole = ctx.args.sound_whole_chunks
            marks = sound.run_sessions(
                base_url,
                paths,
                kinds,
                SHORT_TIMEOUT[voice],
                whole_chunks=whole,
                play_through=ctx.args.sound_play_through,
                hover_ms=ctx.args.sound_hover_ms,
                first_visit=ctx.args.sound_first_visit,
                read_s=ctx.args.sound_read_s,
                connection_warm=not ctx.args.sound_no_connection_warm,
                trusted_spki=ctx.bench.tls_spki,
            )
        res = out[label] = sound.analyse(marks[1:])
        if client.TRACE is not None:
            client.TRACE += sound.trace_events(marks)
        for kind in sound.KINDS:
            if (r := res.get(kind)) is None:
                continue
            whole = ", whole chunks" if ctx.args.sound_whole_chunks else ""
            hover = f", {ctx.args.sound_hover_ms:g} ms hover" if ctx.args.sound_hover_ms else ""
            hover += ", first visit" if ctx.args.sound_first_visit else ""
            if ctx.args.sound_read_s:
                hover += f", {ctx.args.sound_read_s:g} s read"
            if ctx.args.path_idle_close_s and ctx.path:
                hover += f", idle close {ctx.args.path_idle_close_s:g} s"
            if ctx.args.sound_no_connection_warm:
                hover += ", no connection warm"
            if ctx.bench.tls_port:
                proxy = ctx.args.path_tls_proxy
                if proxy == "nginx":
                    proxy += f" {ctx.args.nginx_ssl_buffer_size}"
                hover += ", TLS" if proxy == "daphne" else f", TLS by {proxy}"
            name = f"1e first sound, browser ({kind}{ctx.path}{whole}{hover}, n={r['sessions']})"
            parts = " / ".join(
                fmt(r[k]["p50"]) for k in ("press_to_post", "post_to_frame", "frame_to_sound")
            )
            ctx.row(
                name,
                label,
                "press -> first sample p50 / p95 ms; heard (+ output latency) p50",
                f"{fmt(r['press_to_sound']['p50'])} / {fmt(r['press_to_sound']['p95'])}; "
                f"{fmt(r['press_to_heard']['p50'])}",
            )
            ctx.row(name, label, "parts p50 ms: press->POST / POST->frame / frame->sample", parts)
            if ctx.args.sound_first_visit:
                ctx.row(
                    name,
                    label,
                    "sockets open before the POST's reply",
                    f"{r['early_sockets']} of {r['sessions']}",
                )
            if (through := r.get("played_through")) is not None:
                ctx.row(
                    name,
                    label,
                    "played to the end: sessions with a gap / ended; underruns in all",
                    f"{through['with_a_gap']} / {through['ended']}; {through['underruns']}",
                )
            if kind == "click":
                ctx.row(
                    name,
                    label,
                    f"click ({sound.HOLD_MS} ms press) -> first sample p50 / p95 ms; "
                    "frame in hand at the click",
                    f"{fmt(r['click_to_sound']['p50'])} / {fmt(r['click_to_sound']['p95'])}; "
                    f"{r['frame_before_click']} of {r['sessions']}",
                )


def scenario_streaming(ctx: Context) -> None:
    out = ctx.results.setdefault("streaming", {})
    for voice in ctx.voices():
        repeats = 1 if voice == "full" else ctx.args.long_repeats
        texts = [REFERENCE_TEXT] + [ctx.texts.long() for _ in range(repeats - 1)]
        narrations = streaming.run_long(
            ctx.port, VOICE_IDS[voice], texts, timeout=LONG_TIMEOUT[voice]
        )
        thr = streaming.throughput(narrations)
        engine, model = _baseline_engine(ctx, voice)
        log = ctx.bench.log_dir / f"baseline-{voice}.log"
        env = ctx.bench.env
        if voice == "full":  # the same threads as the workers' synthesis of this voice
            env = {**env, "BENCH_BASELINE_THREADS": env.get("TTS_COQUI_TORCH_THREADS", "0")}
        with streaming.BaselineServer(engine, model, env, log) as server:
            blocking = streaming.run_blocking(server, texts, timeout=LONG_TIMEOUT[voice])
        cmp = streaming.compare(narrations, blocking)
        out[VOICE_IDS[voice]] = {
            "chars": [len(t) for t in texts],
            "throughput": thr,
            "baseline": cmp,
        }
        label, n = VOICE_IDS[voice], len(texts)
        ratio, w = cmp["ratio"], thr["worker_ratio"]
        target = "<= 0.1" if voice == "full" else ""
        ctx.row(
            f"2 vs blocking (n={n})",
            label,
            "TTFA stream / blocking ms",
            f"{fmt(cmp['streaming_ttfa_ms']['p50'])} / "
            f"{fmt(cmp['blocking_time_to_audio_ms']['p50'], 0)}",
        )
        ctx.row(
            f"2 vs blocking (n={n})",
            label,
            "ratio TTFA / time-to-audio",
            fmt(ratio["p50"], 4),
            target,
            (ratio["p50"] <= 0.1) if voice == "full" and ratio["p50"] is not None else None,
        )
        ctx.row(
            f"3 throughput (n={n})",
            label,
            "wall / engine (worker; POST->done)",
            f"{fmt(w['p50'], 3)}; {fmt(thr['e2e_ratio']['p50'], 3)}",
            "<= 1.05",
            w["p50"] is not None and w["p50"] <= 1.05,
        )
        ctx.row(
            f"3 throughput (n={n})",
            label,
            "non-engine ms per chunk p50",
            fmt(thr["overhead_per_chunk_ms"]["p50"]),
        )


def scenario_fanout(ctx: Context) -> None:
    """espeak: a burst (the whole text in about a second, far faster than anyone listens);
    the full-size VITS, where selected: chunks at the pace of a real CPU voice."""
    out = ctx.results.setdefault("fanout", {})
    fast = ["espeak"] if "espeak" in ctx.args.voices else ctx.voices(fast_only=True)
    runs = [(fast[0], "burst")] if fast else []  # `--voices full` alone: the paced run only
    if "full" in ctx.args.voices:
        runs.append(("full", "paced"))
    for voice, pace in runs:
        results = []
        for n in ctx.args.listeners:
            text = ctx.texts.long() if pace == "burst" else ctx.texts.medium(3)
            results.append(
                fanout.run(
                    ctx.bench,
                    VOICE_IDS[voice],
                    text,
                    n,
                    timeout=LONG_TIMEOUT[voice] + 60,
                    rtt_ms=ctx.args.path_rtt_ms,
                    link=ctx.link if ctx.path else None,
                )
            )
        added = fanout.added_latency(results)
        out[VOICE_IDS[voice]] = {"pace": pace, "runs": results, "added": added}
        _fanout_rows(ctx, f"5 fan-out ({pace}{ctx.path})", VOICE_IDS[voice], results, added)


def _fanout_rows(ctx: Context, name: str, voice: str, results: list[dict], added: dict) -> None:
    for r in results:
        lat, first = r["latency_ms"], r["first_chunk_latency_ms"]
        ctx.row(
            name,
            voice,
            f"{r['listeners']} x {r['chunks']} chunks: delivery p50 / p99; chunk 0 p99 ms",
            f"{fmt(lat['p50'])} / {fmt(lat['p99'])}; {fmt(first['p99'])}",
            "all delivered",
            r["every_listener_every_chunk"],
        )
        ctx.row(
            name,
            voice,
            f"{r['listeners']} listeners: late chunks; CPU s daphne / client",
            f"{r['late_chunks']}; {r['cpu_s']['daphne']} / {r['cpu_s']['client']}",
        )
        if "paced" in name:  # the player holds a slow voice (cushion_ms)
            ctx.row(
                name,
                voice,
                f"{r['listeners']} listeners, held by cushion_ms: late chunks; hold p50 s",
                f"{r['late_chunks_held']}; {fmt(r['hold_s']['p50'])}",
            )
    if added:
        ctx.row(
            name,
            voice,
            f"added p99 at {added['listeners']} vs 1 listener ms",
            fmt(added["added_p99_ms"]),
        )


def concurrency_voices(ctx: Context) -> list[str]:
    """The fast voices; on a GPU the full-size voice is one of them (RTF 0.03 on an H200)."""
    return ctx.voices(fast_only=not ctx.coqui_on_gpu)


def scenario_concurrency(ctx: Context) -> None:
    out = ctx.results.setdefault("concurrency", {})
    n, w = ctx.args.concurrent, ctx.args.workers
    for voice in concurrency_voices(ctx):
        texts = [ctx.texts.medium() for _ in range(n)]
        res = out[VOICE_IDS[voice]] = concurrency.run(
            ctx.port, VOICE_IDS[voice], texts, timeout=LONG_TIMEOUT[voice] + 60
        )
        t = res["ttfa_ms"]
        name = f"6 concurrency ({n} on {w})"
        ctx.row(name, VOICE_IDS[voice], "audio s per wall s", fmt(res["audio_s_per_wall_s"]))
        ctx.row(
            name,
            VOICE_IDS[voice],
            "TTFA p50 / p95 / max ms",
            f"{fmt(t['p50'])} / {fmt(t['p95'])} / {fmt(t['max'])}",
        )
        ctx.row(
            name,
            VOICE_IDS[voice],
            "nothing lost; sessions per worker",
            f"{res['nothing_lost']}; {sorted(res['per_worker'].values())}",
            "nothing lost",
            res["nothing_lost"],
        )
    if "full" in ctx.args.voices and not ctx.coqui_on_gpu:
        ctx.notes.append(
            "concurrency: the full-size VITS is left out (20 sessions of it take "
            "minutes on 2 CPU cores)."
        )


def scenario_memory(ctx: Context) -> None:
    voices = [VOICE_IDS[v] for v in ctx.voices(fast_only=True)]
    idle = memory.idle_connections(
        ctx.bench, voices[0], ctx.texts.short(), ctx.args.idle_sockets, timeout=120
    )
    texts = [ctx.texts.short() for _ in range(ctx.args.memory_sessions)]
    growth = memory.worker_growth(
        ctx.bench, voices, texts, first=10, timeout=60, checkpoints=ctx.args.memory_checkpoints
    )
    ctx.results["memory"] = {"idle_connections": idle, "worker_growth": growth}
    marks = list(growth["rss_mb_by_sessions"])  # 10, the checkpoints, the last
    ctx.row(
        "7 memory",
        "+".join(voices),
        f"worker RSS after {' / '.join(str(m) for m in marks)} sessions MB",
        ", ".join(
            " / ".join(str(growth["rss_mb_by_sessions"][m][pid]) for m in marks)
            for pid in growth["rss_mb_after_checkpoint"]
        ),
    )
    ctx.row(
        "7 memory",
        "+".join(voices),
        "worker RSS growth max %",
        fmt(growth["max_growth_pct"], 2),
        "<= 5",
        growth["max_growth_pct"] is not None and growth["max_growth_pct"] <= 5,
    )
    ctx.row(
        "7 memory",
        "-",
        f"daphne per idle socket KB (RSS; USS; n={idle['sockets']})",
        f"{fmt(idle['kb_per_connection_rss'])}; {fmt(idle['kb_per_connection_uss'])}",
    )


# Unmeasured sessions before the scenarios: per fast voice, and of the full-size voice
# when it is the only one (a few seconds each).
WARM_UP_SESSIONS = {"espeak": 3, "tiny": 3, "full": 2}


def warm_up_voices(voices: list[str]) -> list[str]:
    """The voices warm_up narrates: the fast ones; the full-size voice only when no fast
    voice was chosen (a run of it alone measured its first session cold: 30 ms of first
    requests in daphne, its first POST, query and Redis connection)."""
    fast = [v for v in voices if v != "full"]
    return fast or voices


def warm_up(ctx: Context) -> None:
    """A few unmeasured sessions: first requests pay for imports and pools."""
    for voice in warm_up_voices(ctx.voices()):
        texts = [ctx.texts.short() for _ in range(WARM_UP_SESSIONS[voice])]
        ttfa.run_sessions(ctx.port, VOICE_IDS[voice], texts, timeout=SHORT_TIMEOUT[voice])


def scenario_ab(ctx: Context) -> None:
    out = ctx.results.setdefault("ab", {})
    switch = ab.Switch(ctx.bench.switch_file)
    name = "A/B " + "+".join(ctx.args.patch) + " (off -> on)"
    for voice in ctx.voices():
        # The full-size voice: --full-sessions per arm and no long text (a minute each).
        n, k = ctx.count(voice), 0 if voice == "full" else ctx.args.long_repeats
        res = out[VOICE_IDS[voice]] = ab.run(
            switch,
            ctx.port,
            VOICE_IDS[voice],
            short=[ctx.texts.short() for _ in range(2 * n)],
            long=[ctx.texts.long() for _ in range(2 * k)],
            timeout=SHORT_TIMEOUT[voice],
            long_timeout=LONG_TIMEOUT[voice],
        )
        for figure, off, on in ab.figures(res):
            ctx.row(f"{name}, n={n}/{k} per arm", VOICE_IDS[voice], figure, f"{off} -> {on}")


RUNNERS: dict[str, Callable[[Context], None]] = {
    "ab": scenario_ab,
    "warm_up": warm_up,
    "memory": scenario_memory,
    "ttfa": scenario_ttfa,
    "long": scenario_long,
    "cached": scenario_cached,
    "http": scenario_http,
    "flows": scenario_flows,
    "sound": scenario_sound,
    "streaming": scenario_streaming,
    "fanout": scenario_fanout,
    "concurrency": scenario_concurrency,
    "before": scenario_before,
}


# Main --------------------------------------------------------------------------------------


def run_scenarios(ctx: Context) -> None:
    for name in ("warm_up", *SCENARIOS, *EXTRA_SCENARIOS, "ab"):
        if name != "warm_up" and (name == "ab") != ctx.args.ab:
            continue
        if name not in (*ctx.args.scenarios, "warm_up", "ab"):
            continue
        if time.monotonic() > ctx.deadline:
            ctx.notes.append(f"{name}: skipped, past --max-minutes")
            continue
        started = time.monotonic()
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        try:
            RUNNERS[name](ctx)
        except Exception as exc:  # noqa: BLE001 - report it, keep the other scenarios
            traceback.print_exc()
            ctx.notes.append(f"{name}: failed: {type(exc).__name__}: {exc}")
            ctx.results.setdefault("errors", {})[name] = traceback.format_exc()
        took = time.monotonic() - started
        ctx.results.setdefault("durations_s", {})[name] = round(took, 1)
        print(f"[bench] {name} done in {took:.0f} s", file=sys.stderr, flush=True)


def usable_voices(voices: tuple[str, ...]) -> tuple[tuple[str, ...], list[str]]:
    """Leave out, with a note, the voices this machine cannot run (no espeak-ng; the Coqui
    engine or coqui-tts not importable)."""
    keep, notes = [], []
    for voice in voices:
        if voice == "espeak" and shutil.which("espeak-ng") is None:
            notes.append("espeak: skipped, espeak-ng is not installed (make system-deps)")
            continue
        if voice != "espeak":
            check = "import tts.engines.coqui, TTS.api, tts.testing"
            done = subprocess.run(
                [sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=300
            )
            if done.returncode != 0:
                reason = (done.stderr.strip().splitlines() or ["?"])[-1]
                notes.append(f"{voice}: skipped, the Coqui engine is not importable ({reason})")
                continue
        keep.append(voice)
    return tuple(keep), notes


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.voices, skipped = usable_voices(args.voices)
    if not args.voices:
        print("\n".join(skipped) or "no voices", file=sys.stderr)
        return 1
    started, stamp = time.monotonic(), time.strftime("%Y%m%d-%H%M%S")
    log_dir = RESULTS / f"{stamp}-logs"
    run_dir = Path(tempfile.mkdtemp(prefix="tts-bench-"))
    bench = BenchStack(
        run_dir=run_dir,
        log_dir=log_dir,
        voices=args.voices,
        workers=args.workers,
        database_url=args.database_url,
        redis_url=args.redis_url,
        torch_threads=args.torch_threads,
        full_threads=args.full_threads,
        patches=tuple(args.patch),
        profile_dir=log_dir / "profiles" if args.profile else None,
        extra_env=dict(item.split("=", 1) for item in args.env),
        switch_file=run_dir / "ab-on" if args.ab else None,
        tls_port=free_port() if args.path_tls else 0,
        tls_proxy=args.path_tls_proxy,
        nginx_buffer=args.nginx_ssl_buffer_size,
    )
    ctx = Context(args=args, bench=bench, deadline=started + args.max_minutes * 60)
    ctx.notes += skipped
    info: dict = {}
    foreign = ForeignLoad()
    try:
        print("[bench] building models, starting the stack ...", file=sys.stderr, flush=True)
        bench.prepare()
        bench.setup_django()
        bench.start()
        ctx.results["startup_s"] = round(time.monotonic() - started, 1)
        info = machine(bench.env)
        ctx.coqui_on_gpu = str(info.get("coqui_device")).startswith("cuda")
        if "trace" in args.patch:
            client.TRACE = []
        with foreign:
            run_scenarios(ctx)
        if client.TRACE is not None:
            write_json(client.TRACE, log_dir / "timings" / "trace-client.json")
        info["other_processes_cpu"] = load = foreign.summary()
        if load.get("mean_cores", 0) > 0.2:
            ctx.notes.append(
                f"other processes used {load['mean_cores']} CPU cores on average (max "
                f"{load['max_cores']}) while the benchmark ran: latencies are pessimistic; "
                "rerun on a quiet machine"
            )
    finally:
        bench.stop()
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    payload = {
        "started": stamp,
        "duration_s": round(time.monotonic() - started, 1),
        "machine": info,
        "options": {k: v for k, v in vars(args).items() if k != "json"},
        "table": [vars(r) for r in ctx.rows],
        "notes": ctx.notes,
        "results": ctx.results,
        "logs": str(log_dir),
    }
    path = RESULTS / f"{stamp}.json"
    write_json(payload, path, *([args.json] if args.json else []))
    print(_header(info, args, payload["duration_s"]))
    print(table(ctx.rows))
    for note in ctx.notes:
        print(f"note: {note}")
    print(f"\nJSON: {path}" + (f" and {args.json}" if args.json else ""))
    return 1 if "errors" in ctx.results else 0


def _header(info: dict, args: argparse.Namespace, duration: float) -> str:
    return (
        f"\n{info.get('cpu')}, {info.get('cores_logical')} cores, {info.get('ram_gb')} GB"
        + (f", {info['gpu']} (Coqui on {info.get('coqui_device')})" if info.get("gpu") else "")
        + "; "
        f"Python {info.get('python')}, torch {info.get('torch')} "
        f"({info.get('torch_threads_per_worker')} threads/worker"
        + (
            f", the full-size voice {args.full_threads or info.get('torch_threads_per_worker')}"
            if "full" in args.voices
            else ""
        )
        + f"), {info.get('database')}, "
        f"{info.get('redis_server')}, {info.get('event_loop')}; {args.workers} workers; commit "
        f"{(info.get('git_commit') or '?')[:10]}; {duration:.0f} s\n"
    )


if __name__ == "__main__":
    raise SystemExit(main())
