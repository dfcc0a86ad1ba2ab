"""Bench-only instrumentation and experiments, loaded into daphne and the workers by
bench/procs.py (`bench/run.py --patch NAME`). Nothing here changes the app's files:

- ``timings``: wall time of each named function on the hot paths (count, mean, p50,
  p99, max), per process, into ``$BENCH_TIMINGS_DIR/<pid>.json``.
- the other names try a change proposed in docs/benchmarks.md, so that its effect can be
  measured before anyone edits the app; each docstring names the change.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib
import inspect
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

PATCHES: dict[str, Callable[[], None]] = {}


def patch(func: Callable[[], None]) -> Callable[[], None]:
    PATCHES[func.__name__] = func
    return func


def switched_on() -> bool:
    """In paired A/B runs (BENCH_SWITCH_FILE set), experiments apply only while that file
    exists, so the bench alternates sessions with and without them under the same load."""
    flag = os.environ.get("BENCH_SWITCH_FILE")
    return flag is None or os.path.exists(flag)


def replace(owner: object, name: str, new: Callable) -> None:
    """Put ``new`` in place of ``owner.name``, behind the A/B switch when there is one."""
    original = getattr(owner, name)
    if not os.environ.get("BENCH_SWITCH_FILE"):
        setattr(owner, name, new)
        return

    @functools.wraps(original)
    def switch(*args, **kwargs):
        return (new if switched_on() else original)(*args, **kwargs)

    setattr(owner, name, switch)


def in_worker() -> bool:
    """Whether this process is a worker (bench/procs.py sets BENCH_ROLE before it applies
    the patches; ``runworker`` is not yet in ``sys.argv`` then, which made the patches
    that looked for it there no-ops until round 36)."""
    return os.environ.get("BENCH_ROLE") == "worker"


def apply(names: list[str]) -> None:
    for name in names:
        if name not in PATCHES:
            raise SystemExit(f"unknown patch {name!r}; known: {', '.join(sorted(PATCHES))}")
        PATCHES[name]()


# Timings -----------------------------------------------------------------------------------

TIMED = {
    # worker
    "tts.services": [
        "session_run",
        "session_claim",
        "session_claim_next",
        "_take_waiting",
        "stored_chunk_count",
        "session_complete",
        "status_frame",
        "queue_position",
        "get_voice",
        "voice_resolve",
        "session_create",
        "session_dispatch",
        "session_frame",
        "chunk_meta",
        "session_get",
    ],
    "tts.generation": ["get_voice"],
    "tts.synthesis": [
        "session_segments",
        "cached_keys",
        "segment_audio",
        "_synthesize",
        "segment_text",
        "audio_key",
    ],
    "tts.storing": ["chunk_row", "chunks_store"],
    "tts.broadcast": ["broadcast_chunk", "broadcast_status", "broadcast_done", "dispatch_generate"],
    "tts.limits": ["check_rate_limit", "check_active_limit", "record_creation"],
    # web
    "tts.views": ["session_create"],
    "tts.replay": ["stored_chunks", "send_from_storage"],
    # the consumer imported these by name
    "tts.consumers": ["send_from_storage", "deliver_live"],
}
CONSUMER_METHODS = ["connect", "_open", "tts_chunk", "tts_stored", "send_chunk", "_finish_if_over"]

_samples: dict[str, list[float]] = {}
_lock = threading.Lock()


def _record(name: str, seconds: float) -> None:
    with _lock:
        _samples.setdefault(name, []).append(seconds * 1000)


def _dump_forever(filename: str, snapshot: Callable[[], object]) -> None:
    """Every 0.25 s, write ``snapshot()`` as JSON to $BENCH_TIMINGS_DIR/<filename>, whole
    (written aside, then renamed): the bench reads it while the process still runs."""
    directory = Path(os.environ.get("BENCH_TIMINGS_DIR", "/tmp"))
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / filename
    while True:
        time.sleep(0.25)
        path.with_suffix(".tmp").write_text(json.dumps(snapshot()))
        path.with_suffix(".tmp").replace(path)


def _start_dumping(filename: str, snapshot: Callable[[], object]) -> None:
    threading.Thread(
        target=_dump_forever, args=(filename, snapshot), name="bench-dump", daemon=True
    ).start()


def _samples_now() -> dict[str, list[float]]:
    with _lock:
        return {name: list(values) for name, values in _samples.items()}


def _around(func: Callable, enter: Callable[[], Callable[[], None]]) -> Callable:
    """``func`` (sync or async), with ``enter()`` called before each call; what it returns
    is called after the call, however the call ends."""
    if inspect.iscoroutinefunction(func):

        @functools.wraps(func)
        async def wrapped_async(*args, **kwargs):
            leave = enter()
            try:
                return await func(*args, **kwargs)
            finally:
                leave()

        return wrapped_async

    @functools.wraps(func)
    def wrapped(*args, **kwargs):
        leave = enter()
        try:
            return func(*args, **kwargs)
        finally:
            leave()

    return wrapped


def _timed(name: str, func: Callable) -> Callable:
    def enter() -> Callable[[], None]:
        started = time.perf_counter()
        return lambda: _record(name, time.perf_counter() - started)

    return _around(func, enter)


@patch
def timings() -> None:
    _start_dumping(f"{os.getpid()}.json", _samples_now)
    for module_name, names in TIMED.items():
        module = importlib.import_module(module_name)
        for name in names:
            func = getattr(module, name, None)
            if callable(func) and not inspect.ismodule(func) and not inspect.isclass(func):
                setattr(module, name, _timed(f"{module_name.split('.')[-1]}.{name}", func))
    from tts.consumers import SessionConsumer

    for name in CONSUMER_METHODS:
        setattr(SessionConsumer, name, _timed(f"consumer.{name}", getattr(SessionConsumer, name)))


# Experiments: the worker's per-chunk path ----------------------------------------------------


# P1 (pipeline), P2 in part (store_fast), P3 (async_broadcast) and P7 (sqlite_normal)
# were experiments here; they are now the application's own code (docs/benchmarks.md).


@patch
def dispatch_first() -> None:
    """tts/services.py session_dispatch: write dispatched_at before ringing the worker, not
    after. Today the worker's claim (an UPDATE of the same row) races the view's
    UPDATE ... dispatched_at; on SQLite the loser sleeps in the busy handler (1, 2, 5 ms
    ...). If the send fails, the recovery sweep still re-dispatches after
    TTS_QUEUED_TIMEOUT, exactly as for a lost message."""
    from django.utils import timezone

    from tts import broadcast, services
    from tts.models import TTSSession

    def session_dispatch(*, session_id) -> bool:
        TTSSession.objects.filter(pk=session_id).update(dispatched_at=timezone.now())
        return broadcast.dispatch_generate(session_id)

    replace(services, "session_dispatch", session_dispatch)


@patch
def pending_reads_at_once() -> None:
    """P43 off: a pending socket reads at once, even while its process answers a POST
    (its own, most likely), as before round 10. For paired A/B runs of P43 itself."""
    from tts import waiting

    replace(waiting, "until_no_posts", lambda event: False)


@patch
def first_part_with_rest() -> None:
    """P92 off: a chunk's parts written to the socket in one go, as before round 37 (the
    first part then shares daphne's write, and a TLS proxy's read and records, with the
    rest). For runs that compare P92 with the code before it."""
    from tts import consumers

    on = (consumers.BOOST_BYTES, consumers.IDLE_S)

    def setting(off_p92: bool) -> None:
        consumers.BOOST_BYTES, consumers.IDLE_S = (0, float("inf")) if off_p92 else on

    _per_session(setting)  # under --ab, switched as each POST comes (daphne's request_started)


@patch
def uncompiled() -> None:
    """P45 off: every tts.compiled query (the POST's replay lookup and session read, the
    worker's claim and audio-key lookup, a socket's reads) built and run by the ORM on
    every call, as before round 10."""
    from tts import compiled

    def orm_run(self, *, using=None, **values):
        built = self._build(**values)
        if self._compile is compiled._compile_update_returning:
            queryset, updates = built
            return (queryset.using(using) if using else queryset).update_returning(**updates)
        return list(built.using(using) if using else built)

    replace(compiled.Compiled, "run", orm_run)


@patch
def pysbd_always() -> None:
    """P47 off: every block of text goes through pysbd, plain sentences too."""
    from tts import segmentation

    replace(segmentation, "_plain_sentence_ends", lambda block, language: None)


@patch
def blob_upsert() -> None:
    """tts/storing.py _blob_store: insert the audio with INSERT ... ON CONFLICT DO NOTHING
    (``bulk_create(ignore_conflicts=True)``) instead of a savepoint around a plain INSERT:
    one statement per new chunk instead of three, on the writer thread."""
    from tts import storing
    from tts.models import AudioBlob

    def _blob_store(audio) -> None:
        AudioBlob.objects.bulk_create(
            [
                AudioBlob(
                    key=audio.key,
                    pcm=audio.pcm,
                    sample_rate=audio.sample_rate,
                    samples=audio.samples,
                )
            ],
            ignore_conflicts=True,
        )

    replace(storing, "_blob_store", _blob_store)


@patch
def switch_interval() -> None:
    """The worker's GIL hand-over every 0.5 ms instead of 5 while a session runs: the
    synthesis thread, back from the engine, waits less for the writer and sender threads."""
    import sys

    from tts import services

    original = services.session_run

    def session_run(**kwargs):
        before = sys.getswitchinterval()
        sys.setswitchinterval(0.0005)
        try:
            return original(**kwargs)
        finally:
            sys.setswitchinterval(before)

    replace(services, "session_run", session_run)


# Trace -------------------------------------------------------------------------------------

_trace: list[tuple[float, str]] = []


def _traced(label: str, func: Callable) -> Callable:
    def enter() -> Callable[[], None]:
        _trace.append((time.time(), f"{label} >"))
        return lambda: _trace.append((time.time(), f"{label} <"))

    return _around(func, enter)


def _trace_collections() -> None:
    """The garbage collector's passes into the timeline: every one of generations 1 and 2,
    and those of generation 0 that took over BENCH_GC_MIN_MS (0.5 ms; 0: all)."""
    import gc

    began, least = [0.0], float(os.environ.get("BENCH_GC_MIN_MS", "0.5")) / 1000

    def callback(phase: str, info: dict) -> None:
        if phase == "start":
            began[0] = time.time()
            return
        now, generation = time.time(), info["generation"]
        if generation or now - began[0] >= least:
            _trace.append((began[0], f"gc.gen{generation} >"))
            _trace.append((now, f"gc.gen{generation} <"))

    gc.callbacks.append(callback)


@patch
def trace() -> None:
    """A timeline (wall clock) of the steps of a request and a socket in daphne, and of a
    dispatch in the worker (its receive, claim, cut, cache query, synthesis, broadcast),
    into ``$BENCH_TIMINGS_DIR/trace-<pid>.json`` per process: where a POST's time goes
    (``bench/trace.py`` lines the processes up, session by session)."""
    _start_dumping(f"trace-{os.getpid()}.json", lambda: list(_trace))
    _trace_collections()
    from channels_redis.core import RedisChannelLayer
    from django.core.handlers import asgi as django_asgi

    from tts import broadcast, services, storing, synthesis, views, worker
    from tts.consumers import SessionConsumer

    # the worker's side of a dispatch: its receive, the consumer, the claim
    RedisChannelLayer.receive = _traced("layer.receive", RedisChannelLayer.receive)
    # The group send's own steps, on the sender loop's thread: its start there, the
    # messages' packing (msgpack of the PCM) and the Redis scripts.
    from tts import layers

    layer_class = layers.RedisChannelLayer
    layer_class.group_send = _traced("layer.group_send", layer_class.group_send)
    layer_class._map_channel_keys_to_connection = _traced(
        "layer.pack", layer_class._map_channel_keys_to_connection
    )
    worker.GenerateConsumer.tts_generate = _traced(
        "worker.tts_generate", worker.GenerateConsumer.tts_generate
    )
    # labelled "services.<name>" as when they all lived there (bench/trace.py, schedstat.py)
    for module, name in [
        (services, "session_claim"),
        (synthesis, "session_segments"),
        (synthesis, "cached_keys"),
        (synthesis, "_synthesize"),
        (storing, "chunks_store"),
        (services, "session_complete"),
    ]:
        setattr(module, name, _traced(f"services.{name}", getattr(module, name)))
    synthesis.segment_text = _traced("segment_text", synthesis.segment_text)
    ahead = synthesis.HeadAhead
    ahead.start = classmethod(_traced("ahead.start", ahead.start.__func__))
    broadcast.dispatch_generate = _traced("dispatch_generate", broadcast.dispatch_generate)
    broadcast.broadcast_chunk = _traced("broadcast_chunk", broadcast.broadcast_chunk)
    # the view's own steps, up to the service's insert and its dispatch
    for name in ["owner_from_request", "parse_body"]:
        setattr(views, name, _traced(f"views.{name}", getattr(views, name)))
    for name in ["voice_resolve", "narration_key", "_insert_replay", "_insert"]:
        setattr(services, name, _traced(f"services.{name}", getattr(services, name)))
    views.session_create = _traced("view", views.session_create)
    services.session_create = _traced("service", services.session_create)
    broadcast._group_send = _traced("group_send", broadcast._group_send)
    from tts.asgi import SyncChainASGIHandler

    handler = django_asgi.ASGIHandler
    # tts.asgi's own handle (P91: request_started goes with the chain's trip, so
    # "asgi.started" below shows only for a request refused before its chain)
    SyncChainASGIHandler.handle = _traced("asgi.handle", SyncChainASGIHandler.handle)
    handler.create_request = _traced("asgi.create_request", handler.create_request)
    # Before create_request: the body's read
    handler.read_body = _traced("asgi.read_body", handler.read_body)
    from django.core.signals import request_started

    request_started.asend = _traced("asgi.started", request_started.asend)
    # a socket's database trip, on the web process's one thread for them
    from tts.db import SocketDatabaseSyncToAsync

    trip = SocketDatabaseSyncToAsync.thread_handler
    SocketDatabaseSyncToAsync.thread_handler = _traced("socket.db", trip)
    # the middleware chain: its first middleware's entry, the view's lookup after the rest
    from django.core.handlers.base import BaseHandler
    from django.middleware.security import SecurityMiddleware

    SecurityMiddleware.__call__ = _traced("chain", SecurityMiddleware.__call__)
    BaseHandler._get_response = _traced("chain.get_response", BaseHandler._get_response)
    handler.send_response = _traced("asgi.send_response", handler.send_response)
    for name in ["connect", "_open", "_created", "dispatch", "send_chunk", "_finish_if_over"]:
        setattr(SessionConsumer, name, _traced(f"consumer.{name}", getattr(SessionConsumer, name)))
    # daphne's side: a request fully read by twisted, a socket's handshake (a window can
    # start there: bench/trace.py --start "http.post >")
    from daphne.http_protocol import WebRequest
    from daphne.ws_protocol import WebSocketProtocol

    process = WebRequest.process

    def traced_process(self):
        label = f"http.{self.method.decode('latin-1').lower()}"  # a socket's: http.get
        _trace.append((time.time(), f"{label} >"))
        try:
            return process(self)
        finally:
            _trace.append((time.time(), f"{label} <"))

    WebRequest.process = traced_process
    WebSocketProtocol.onConnect = _traced("ws.handshake", WebSocketProtocol.onConnect)
    WebSocketProtocol.onOpen = _traced("ws.open", WebSocketProtocol.onOpen)


def _per_session(setting: Callable[[bool], None]) -> None:
    """A process-wide setting: on from the start in whole runs; in a paired A/B (``--ab``),
    set on or off as each session begins (a worker's ``session_run``, daphne's
    ``request_started``), both arms paying the same system calls."""
    if not os.environ.get("BENCH_SWITCH_FILE"):
        setting(True)
        return
    if in_worker():
        from tts import services

        def enter() -> Callable[[], None]:
            setting(switched_on())
            return lambda: None

        services.session_run = _around(services.session_run, enter)
    else:
        from django.core.signals import request_started

        request_started.connect(lambda **kwargs: setting(switched_on()), weak=False)


def _can_undo(name: str, lower: Callable[[], None], restore: Callable[[], None]) -> None:
    """Under ``--ab`` a lowered priority is put back for every "off" session, which takes
    CAP_SYS_NICE (root) or a raised RLIMIT_NICE: try it once now, on this thread, so that
    a run without it stops with a message instead of failing its sessions."""
    if not os.environ.get("BENCH_SWITCH_FILE"):
        return
    lower()
    try:
        restore()
    except PermissionError:
        raise SystemExit(
            f"--ab --patch {name}: putting the priority back between sessions needs "
            "CAP_SYS_NICE (run as root) or a raised RLIMIT_NICE; or run it without --ab"
        ) from None


def _threads() -> list[int]:
    return [int(tid) for tid in os.listdir("/proc/self/task")]


@patch
def worker_nice() -> None:
    """Workers at a lower CPU priority than daphne (nice BENCH_NICE, default 10). Until
    round 36 this was a no-op (it looked for ``runworker`` in ``sys.argv`` too early)."""
    if not in_worker():
        return
    level = int(os.environ.get("BENCH_NICE", "10"))
    me = threading.get_native_id()
    _can_undo(
        "worker_nice",
        lambda: os.setpriority(os.PRIO_PROCESS, me, level),
        lambda: os.setpriority(os.PRIO_PROCESS, me, 0),
    )

    def setting(on: bool) -> None:
        for tid in _threads():
            with contextlib.suppress(ProcessLookupError):
                os.setpriority(os.PRIO_PROCESS, tid, level if on else 0)

    _per_session(setting)


@patch
def affinity() -> None:
    """Each process on CPUs of its own: daphne on BENCH_CPUS_WEB (default "0"), the
    workers on BENCH_CPUS_WORKER (default: every CPU not the web's; either may be "all"),
    so that a synthesis
    or a store never takes the core the relay of a chunk, or the next POST, is waiting
    for, and each process's caches stay on one core. Threads started later inherit it.
    The product's own pinning (P89's TTS_WEB_CPUS, TTS_WORKER_CPUS) is tts.cpus's, which
    this uses, switched per session for ``--ab``."""
    from tts import cpus as pinning

    cpus = frozenset(os.sched_getaffinity(0))

    def chosen(value: str) -> frozenset[int]:
        return cpus if value == "all" else pinning.parse(value)

    web = chosen(os.environ.get("BENCH_CPUS_WEB", "0"))
    worker = os.environ.get("BENCH_CPUS_WORKER")
    mine = chosen(worker) if worker else (cpus - web or web)
    if not in_worker():
        mine = web

    def setting(on: bool) -> None:
        pinning.pin(mine if on else cpus)

    _per_session(setting)


@patch
def low_priority_work() -> None:
    """Workers only: the engine thread's syntheses (a session's second segment on; the
    first is made on the loop's own thread) and the store threads' stores at the lowest
    priority (BENCH_LOW_MODE: ``idle``, Linux's SCHED_IDLE, the default; ``batch``; or
    ``nice``, nice 19), the threads that relay the first chunk (the loop, the sender
    loop) and daphne as they are: whatever is waiting on the way to first audio gets a
    core at once, and the work that is not waited for takes what is left, on every core
    (P89's partition gave daphne a core, and the workers lost it). Set per call, so that
    ``--ab`` alternates it; BENCH_LOW_THREADS: ``engine,store`` (the default), or one."""
    if not in_worker():
        return
    from tts import storing, synthesis

    mode = os.environ.get("BENCH_LOW_MODE", "idle")
    which = set(os.environ.get("BENCH_LOW_THREADS", "engine,store").split(","))
    normal = os.sched_param(0)

    def lowered(on: bool) -> None:
        if mode == "nice":
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19 if on else 0)
            return
        policy = {"idle": os.SCHED_IDLE, "batch": os.SCHED_BATCH}[mode]
        os.sched_setscheduler(0, policy if on else os.SCHED_OTHER, normal)

    _can_undo("low_priority_work", lambda: lowered(True), lambda: lowered(False))

    def enter_on(thread_name: str) -> Callable[[], Callable[[], None]]:
        def enter() -> Callable[[], None]:
            if threading.current_thread().name == thread_name:
                lowered(switched_on())
            return lambda: None

        return enter

    if "engine" in which:
        synthesis._synthesize = _around(synthesis._synthesize, enter_on("tts-engine"))
    if "store" in which:
        storing.chunks_store = _around(storing.chunks_store, enter_on("tts-store"))


@patch
def pg_async_commit() -> None:
    """PostgreSQL: a worker's claim and stores commit without waiting for the disk
    (``synchronous_commit`` off for them; P50, now the workers' default). Both arms of an
    A/B set the setting on their connection, on or off, before each claim and store: the
    same statements, one setting apart (not ``replace``, which would add the statement to
    one arm only). The worker's pool serves the worker alone, so the session-level SET
    leaks nowhere else."""
    from django.db import connection

    from tts import services, storing

    def setting() -> Callable[[], None]:
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(f"SET synchronous_commit TO {'off' if switched_on() else 'on'}")
        return lambda: None

    for module, name in [(services, "session_claim"), (storing, "chunks_store")]:
        setattr(module, name, _around(getattr(module, name), setting))


@patch
def direct_generate() -> None:
    """The worker's `tts-generate` listener hands each message straight to a thread of
    its own and waits for it before it takes the next (none held in memory while busy),
    instead of Channels' way: the application instance's queue, its consumer's dispatch
    and ``database_sync_to_async``'s thread."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from channels.worker import Worker
    from django.db import close_old_connections

    from tts.broadcast import GENERATE_CHANNEL
    from tts.worker import GenerateConsumer

    original = Worker.listener
    executor = ThreadPoolExecutor(1, thread_name_prefix="tts-generate")

    def run(message: dict) -> None:
        close_old_connections()
        try:
            GenerateConsumer.tts_generate(None, message)
        finally:
            close_old_connections()

    async def listener(self, channel):
        if channel != GENERATE_CHANNEL:
            return await original(self, channel)
        loop = asyncio.get_running_loop()
        scope = {"type": "channel", "channel": channel}
        while True:
            message = await self.channel_layer.receive(channel)
            if switched_on():
                await loop.run_in_executor(executor, run, message)
            else:
                await self.get_or_create_application_instance(channel, scope).put(message)

    Worker.listener = listener


@patch
def blocking_first_send() -> None:
    """tts/broadcast.py _group_send: a send that is waited for (the first chunk's) runs on
    the calling thread through a blocking Redis connection, as the doorbell's does
    (``send_blocking``), instead of going to the sender loop's thread and back, when
    nothing is queued on that loop before it (else order would break)."""
    import time as _time

    from channels.layers import get_channel_layer

    from tts import broadcast, redis_client
    from tts.layers import GROUP_SEND_LUA, MEMBERS_LUA

    scripts: dict[int, tuple] = {}

    def group_send_blocking(layer, group: str, message: dict) -> None:
        index = layer.consistent_hash(group)
        if index not in scripts:
            client = redis_client.client_for(layer.hosts[index])
            scripts[index] = (
                client.register_script(MEMBERS_LUA),
                client.register_script(GROUP_SEND_LUA),
            )
        members_script, _ = scripts[index]
        members = members_script(
            keys=[layer._group_key(group)], args=[int(_time.time()) - layer.group_expiry]
        )
        names = [name.decode("utf8") for name in members]
        by_connection, messages, capacities = layer._map_channel_keys_to_connection(names, message)
        for index, keys in by_connection.items():
            if index not in scripts:
                client = redis_client.client_for(layer.hosts[index])
                scripts[index] = (
                    client.register_script(MEMBERS_LUA),
                    client.register_script(GROUP_SEND_LUA),
                )
            now = _time.time()
            scripts[index][1](
                keys=keys,
                args=[
                    *(messages[key] for key in keys),
                    *(capacities[key] for key in keys),
                    now,
                    int(now) - int(layer.expiry),
                    int(layer.expiry),
                ],
            )

    original = broadcast._group_send

    def _group_send(session_id, event, *, wait: bool = False) -> None:
        layer = get_channel_layer()
        if not wait or layer is None or broadcast._sender._backlog:
            return original(session_id, event, wait=wait)
        with contextlib.suppress(Exception):  # as a lost event: listeners catch up
            group_send_blocking(layer, broadcast.session_group(session_id), event)

    replace(broadcast, "_group_send", _group_send)


@patch
def late_first_store() -> None:
    """tts/storing.py chunks_store: the first chunk's store (on the writer thread) waits
    BENCH_STORE_DELAY_MS (default 2) first, so that the relay of the first chunk to the
    client (daphne, the client) has the second core while the engine makes the next one."""
    from tts import storing

    delay = float(os.environ.get("BENCH_STORE_DELAY_MS", "2")) / 1000
    original = storing.chunks_store

    def chunks_store(*args, **kwargs):
        if kwargs.get("total_chunks") is not None:  # the session's first batch
            time.sleep(delay)
        return original(*args, **kwargs)

    replace(storing, "chunks_store", chunks_store)


@patch
def late_second_synthesis() -> None:
    """tts/synthesis.py synthesize_segment: the synthesis after a session's first waits
    BENCH_SYNTH_DELAY_MS (default 3) before it begins, so that the first chunk's relay
    (Redis, daphne, the client) runs beside an idle engine, not beside a full-size
    model streaming its weights through the caches the relay's processes share. One
    flag for the worker's engine thread: with sessions side by side (P9) it may hold back
    another session's segment; the experiment ran them one at a time."""
    from tts import synthesis

    delay = float(os.environ.get("BENCH_SYNTH_DELAY_MS", "3")) / 1000
    original = synthesis.synthesize_segment
    after_first = threading.local()

    def synthesize_segment(segment, *args, **kwargs):
        if getattr(after_first, "value", False) and segment.char_start > 0:
            time.sleep(delay)
        after_first.value = segment.char_start == 0
        return original(segment, *args, **kwargs)

    replace(synthesis, "synthesize_segment", synthesize_segment)


@patch
def early_head() -> None:
    """tts/services.py session_run: before the claim, read the queued session's text and
    voice (one query) and put its first segments on the engine thread (as HeadAhead does
    for a long text's head, here for every text), so that the claim, the cut of the whole
    text and the cache lookups run while the engine makes the first segment."""
    from tts import services, synthesis
    from tts.models import SessionStatus, TTSSession
    from tts.voices import get_voice

    started: dict = {}
    original_run = services.session_run
    original_start = synthesis.HeadAhead.start.__func__

    def begin(session_id) -> None:
        row = (
            TTSSession.objects.filter(pk=session_id, status=SessionStatus.QUEUED)
            .values_list("text", "voice", "model", "completed_chunks")
            .first()
        )
        if row is None or row[3]:
            return
        text, voice_id, model, _ = row
        voice = get_voice(voice_id)
        if voice is None:
            return
        whole = len(text) <= 2 * synthesis.HeadAhead.HEAD_CHARS
        head = text if whole else text[: synthesis.HeadAhead.HEAD_CHARS]
        cut = synthesis.segment_text(
            head, language=voice.language, **synthesis.voice_cutting(voice)
        )
        usable = (cut if whole else cut[:-1])[: 1 + synthesis.SYNTHESIS_AHEAD]
        if not usable:
            return
        keys = [synthesis.segment_key(s, voice=voice, engine_model=model) for s in usable]
        stored, seen, out = synthesis.cached_keys(keys), set(), []
        begun, queued = threading.Event(), False
        for segment, key in zip(usable, keys, strict=True):
            future = None
            if key not in stored and key not in seen:
                if not queued:
                    synthesis.engine_thread.submit_first(begun.set)
                    queued = True
                future = synthesis.engine_thread.submit_first(
                    synthesis.synthesize_segment, segment, voice, key
                )
            seen.add(key)
            out.append((segment, key, future))
        if queued:
            begun.wait(synthesis.HeadAhead.HAND_OVER_S)
        started[str(session_id)] = synthesis.HeadAhead(out)

    def session_run(*, session_id, worker):
        started.clear()
        with contextlib.suppress(Exception):  # as without the head: the run goes on
            begin(session_id)
        return original_run(session_id=session_id, worker=worker)

    def start(cls, session, voice, *, urgent=False):
        ahead = started.pop(str(session.id), None)
        if ahead is not None:
            return ahead
        return original_start(cls, session, voice, urgent=urgent)

    replace(services, "session_run", session_run)
    synthesis.HeadAhead.start = classmethod(start)


@patch
def wal_pages() -> None:
    """SQLite: ``PRAGMA wal_autocheckpoint=BENCH_WAL_PAGES`` (default 10000 pages, 40 MB;
    SQLite's own is 1000) on every connection of daphne and the workers: fewer, larger
    checkpoints (each pays two disk syncs whatever its size). Since P76 the connections
    other than the store threads' have 10000 already (TTS_SQLITE_CHECKPOINT_PAGES), so the
    default changes the store threads' only; 100000 means no checkpoint in a run. Whole
    runs, not an A/B."""
    _checkpoint_every(int(os.environ.get("BENCH_WAL_PAGES", "10000")))


def _checkpoint_every(pages: int) -> None:
    """``PRAGMA wal_autocheckpoint=pages`` on every SQLite connection this process opens."""
    from django.db.backends.signals import connection_created

    def pragma(sender, connection, **kwargs) -> None:
        if connection.vendor == "sqlite":
            with connection.cursor() as cursor:
                cursor.execute(f"PRAGMA wal_autocheckpoint={pages}")

    connection_created.connect(pragma, weak=False)


@patch
def writer_queue() -> None:
    """tts/storing.py OrderedWriter: at most BENCH_WRITER_QUEUE chunks (default 4, as
    before P59; 16 since) on their way to the database before the engine's loop waits.
    Whole runs, not an A/B."""
    from tts import storing

    storing.OrderedWriter.MAX_QUEUED = int(os.environ.get("BENCH_WRITER_QUEUE", "4"))


@patch
def synthesis_ahead() -> None:
    """tts/synthesis.py SYNTHESIS_AHEAD: BENCH_SYNTHESIS_AHEAD segments (default 4, not
    2) queued on the engine thread ahead of the one the session's loop waits for. Whole
    runs, not an A/B."""
    from tts import synthesis

    synthesis.SYNTHESIS_AHEAD = int(os.environ.get("BENCH_SYNTHESIS_AHEAD", "4"))


@patch
def session_end_checkpoint() -> None:
    """SQLite, workers only: each session's writer runs a PASSIVE checkpoint once the
    session's last store is done (after its `done`), and the workers' connections check
    point on their own only past BENCH_WAL_PAGES pages (default 4000, 16 MB), so that a
    long session's stores no longer meet SQLite's 4 MB checkpoint on the way. Whole runs,
    not an A/B."""
    if not in_worker():
        return
    from django.db import connection

    from tts import storing

    _checkpoint_every(int(os.environ.get("BENCH_WAL_PAGES", "4000")))
    run = storing.OrderedWriter._run

    def run_then_checkpoint(self) -> None:
        run(self)
        if connection.vendor == "sqlite":
            with connection.cursor() as cursor:
                cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")

    storing.OrderedWriter._run = run_then_checkpoint


@patch
def slow_engine() -> None:
    """tts/synthesis.py _synthesize: after each synthesis, inside the engine's measured
    time, a stand-in for a large model's (round 20: whether the full-size voice's larger
    overhead comes from what its synthesis does to the host, not from the pipeline).
    BENCH_SLOW_MODE: for BENCH_SLOW_S (default 1.5) more, asleep (sleep, the default),
    busy in Python (spin), in torch's matrix products (torch) or reading BENCH_SWEEP_MB
    (default 150, the full-size VITS's weights) over and over (memory); or reading them
    once (sweep: the caches such a model leaves, and no more time)."""
    from tts import synthesis

    seconds = float(os.environ.get("BENCH_SLOW_S", "1.5"))
    mode = os.environ.get("BENCH_SLOW_MODE", "sleep")
    if mode in ("memory", "sweep"):
        import numpy as np

        weights = np.ones(int(float(os.environ.get("BENCH_SWEEP_MB", "150")) * 2**20 // 8))
    original = synthesis._synthesize

    def _synthesize(*args, **kwargs):
        audio = original(*args, **kwargs)
        until = time.perf_counter() + seconds
        if mode == "sweep":
            weights.sum()
        elif mode == "memory":
            while time.perf_counter() < until:
                weights.sum()
        elif mode == "spin":
            while time.perf_counter() < until:
                pass
        elif mode == "torch":
            import torch

            a = torch.rand(512, 512)
            while time.perf_counter() < until:
                a = torch.tanh(a @ a)
        else:
            time.sleep(seconds)
        return audio

    replace(synthesis, "_synthesize", _synthesize)


# Memory ----------------------------------------------------------------------------------


def _sqlite_memory_used() -> int:
    """Bytes SQLite holds (its page caches, statements, schemas), all connections of the
    process: ``sqlite3_memory_used`` of the library Python's sqlite3 is linked to."""
    import sqlite3  # noqa: F401 - loads the library, so that the name below finds that copy

    try:
        lib = ctypes.CDLL("libsqlite3.so.0")
    except OSError:
        return 0
    lib.sqlite3_memory_used.restype = ctypes.c_int64
    return lib.sqlite3_memory_used()


@patch
def heap_census() -> None:
    """What a worker's memory is made of as sessions go by (not a change to try): after
    every BENCH_CENSUS_EVERY (50) calls of ``session_run``, a line of JSON into
    ``$BENCH_TIMINGS_DIR/census-<pid>.jsonl``: RSS, glibc's heap in use and free, the
    Python objects by type (the 25 most numerous), and, with BENCH_TRACEMALLOC=1, the 15
    source lines whose Python allocations grew most since the first line (slow)."""
    import collections
    import gc
    import tracemalloc

    from bench.stack import rss_mb
    from tts import services
    from tts.testing import malloc_info

    every = int(os.environ.get("BENCH_CENSUS_EVERY", "50"))
    traced = os.environ.get("BENCH_TRACEMALLOC") == "1"
    if traced:
        tracemalloc.start(8)
    path = Path(os.environ.get("BENCH_TIMINGS_DIR", "/tmp")) / f"census-{os.getpid()}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"calls": 0, "first": None}

    def census() -> dict:
        gc.collect()
        types = collections.Counter(type(o).__name__ for o in gc.get_objects())
        heap = {f"{k}_mb": round(v / 2**20, 1) for k, v in (malloc_info() or {}).items()}
        line = {
            "calls": state["calls"],
            "rss_mb": round(rss_mb(os.getpid()), 1),
            **heap,
            "sqlite_mb": round(_sqlite_memory_used() / 2**20, 1),
            "threads": threading.active_count(),
            "objects": sum(types.values()),
            "types": dict(types.most_common(25)),
        }
        if traced:
            snapshot = tracemalloc.take_snapshot()
            if state["first"] is None:
                state["first"] = snapshot
            else:
                line["grew"] = [
                    f"{stat.size_diff / 1024:+.1f} KiB {stat.count_diff:+d} {stat.traceback}"
                    for stat in snapshot.compare_to(state["first"], "traceback")[:15]
                ]
        return line

    def after() -> None:
        state["calls"] += 1
        if state["calls"] % every:
            return
        try:
            line = json.dumps(census())
        except Exception as exc:  # noqa: BLE001 - an instrument never fails a session
            line = json.dumps({"calls": state["calls"], "error": repr(exc)})
        with path.open("a") as out:
            out.write(line + "\n")

    services.session_run = _around(services.session_run, lambda: after)
