"""Django's HTTP handling under ASGI with one thread hop per request, not one per
middleware, on threads that live as long as the process.

Django's ``ASGIHandler`` builds its middleware chain in async mode whenever every
middleware can run async, and the stock ones can: each ``MiddlewareMixin`` then runs its
``process_request`` and ``process_response`` through ``sync_to_async``, a trip to a
thread and back per middleware and direction, before and after a view that is sync
anyway (all of this project's are). That is the larger part of what a request costs
here (docs/benchmarks.md, P16). ``get_asgi_application`` below builds the chain in sync
mode, as Django's WSGI handler does, and enters it once, on the request's own thread.

That thread is Django's one per request (a ``ThreadSensitiveContext``): made for the
request and gone after it, with the database connection it opened. Here a request
borrows one of ``TTS_REQUEST_THREADS`` long-lived threads instead (asgiref's
``ThreadSensitiveContext(executor=...)``, which leaves the executor running), and that
thread keeps its connection for ``TTS_WEB_CONN_MAX_AGE`` seconds (``tts/db.py``), as a
WSGI server's threads do with ``CONN_MAX_AGE``: a request no longer opens a connection
first (P23). When every such thread is busy (slow downloads of long narrations), a
request gets a fresh thread of its own, exactly as under Django's handler, so a request
never waits for a thread.

The chain's trip also sends ``request_started``, which Django's handler sends by a trip of
its own before it (P91): a request goes to its thread once on its way to the view.

Async views still work (Django runs them through ``async_to_sync`` in a sync chain), and
so do async streaming responses. A project whose middleware is async-only gains nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sys
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import django
from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.urls import set_script_prefix

from tts import waiting
from tts.conf import settings
from tts.db import keep_thread_connections, mark_long_lived
from tts.threads import LentThreads


def _request_thread() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(
        max_workers=1, thread_name_prefix="django-request", initializer=mark_long_lived
    )


class RequestThreads(LentThreads[ThreadPoolExecutor]):
    """Long-lived one-thread executors, lent to one request at a time; when ``size`` are
    lent out, a request gets a fresh thread, as in Django. A request that was cancelled
    (its client gone, a shutdown) or failed may leave a sync call running on its thread,
    for asgiref cannot stop one: it goes back with ``give_back_once_idle``."""

    def __init__(self, size: int) -> None:
        super().__init__(_request_thread, size)


# Request threads warmed at start (tts.warmup): the ones the first requests take.
WARM_REQUEST_THREADS = 2

_handlers: weakref.WeakSet[SyncChainASGIHandler] = weakref.WeakSet()


class SyncChainASGIHandler(ASGIHandler):
    def __init__(self) -> None:
        super().__init__()
        self.threads = RequestThreads(settings.TTS_REQUEST_THREADS)
        _handlers.add(self)

    async def warm_up(self) -> None:
        """Open the database connection and the doorbell's Redis connection of the
        request threads the next requests will take (``tts.warmup``)."""
        from tts.warmup import warm_thread

        taken = [self.threads.take() for _ in range(WARM_REQUEST_THREADS)]
        taken = [executor for executor in taken if executor is not None]
        try:
            for executor in taken:
                await asyncio.wrap_future(executor.submit(warm_thread))
        except BaseException:
            for executor in taken:  # each once what it runs now has ended
                self.threads.give_back_once_idle(executor)
            raise
        for executor in reversed(taken):  # the first one warmed is lent first
            self.threads.give_back(executor)

    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=False)
        chain = self._middleware_chain

        def run_chain(request):
            request.tts_started = True  # see handle's cancelled branch
            try:
                # Django's handle() sends it by a trip of its own, before (see handle below).
                signals.request_started.send(sender=self.__class__, scope=request.scope)
                return chain(request)
            finally:  # before request_finished, which would close it
                keep_thread_connections()  # on a lent thread (not a fresh one)

        # Runs on the thread of the request's ThreadSensitiveContext (see __call__).
        self._middleware_chain = sync_to_async(run_chain, thread_sensitive=True)

    async def handle(self, scope, receive, send) -> None:
        """Django's ``ASGIHandler.handle`` (5.2) but for where ``request_started`` is sent:
        as the middleware chain's one trip to the request's thread begins (``run_chain``),
        where Django awaits ``request_started.asend`` before it makes the request, a trip of
        its own (two tasks, to the thread and back) for the two sync receivers (P91). A
        request Django cannot make (a query string that is not UTF-8: 400) sends it as
        Django does, after that; one whose client went before its chain began sends it
        with ``request_finished``, so that the two still pair. ``tests/test_asgi.py`` pins
        the source this is copied from."""
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            await signals.request_started.asend(sender=self.__class__, scope=scope)
            body_file.close()
            await self.send_response(error_response, send)
            await sync_to_async(error_response.close)()
            return

        async def process_request(request, send):
            response = await self.run_get_response(request)
            with contextlib.suppress(asyncio.CancelledError):  # the client went meanwhile
                await self.send_response(response, send)
            return response

        # The disconnect's listener first: it raises nothing that would keep
        # process_request from being cancelled.
        tasks = [
            asyncio.create_task(self.listen_for_disconnect(receive)),
            asyncio.create_task(process_request(request, send)),
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:  # both may have finished by now
            if task.done():
                try:
                    task.result()
                except RequestAborted:
                    pass  # the client went
                except AssertionError:
                    body_file.close()
                    raise
            else:
                task.cancel()  # a view may handle its cancellation
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        try:
            response = tasks[1].result()
        except asyncio.CancelledError:
            # On the request's thread, after anything the chain began there.
            await sync_to_async(self._end_cancelled)(request)
        else:
            await sync_to_async(response.close)()
        body_file.close()

    def _end_cancelled(self, request) -> None:
        """A request whose client went before its response: ``request_finished``, and
        ``request_started`` first if its chain never began (it was cancelled before)."""
        if not getattr(request, "tts_started", False):
            signals.request_started.send(sender=self.__class__, scope=request.scope)
        signals.request_finished.send(sender=self.__class__)

    async def __call__(self, scope, receive, send) -> None:
        # A pending socket waits for this process's POSTs before it reads (tts.waiting).
        with waiting.answering_post(scope.get("method", "")):
            await self._answer(scope, receive, send)

    async def _answer(self, scope, receive, send) -> None:
        executor = self.threads.take() if scope["type"] == "http" else None
        if executor is None:  # Django's own: a fresh thread (or its error for non-HTTP)
            return await super().__call__(scope, receive, send)
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.handle(scope, receive, send)
        except BaseException:
            self.threads.give_back_once_idle(executor)
            raise
        self.threads.give_back(executor)  # handle() awaited every sync call it made


async def warm_up_web() -> None:
    """A web process's warm-up (``tts.warmup``): the sockets' thread (its connection and
    the compiled SQL), every handler's request threads, then the process's own (the URL
    map, the voices, the doorbell's Redis script)."""
    from tts.db import socket_database_sync_to_async
    from tts.warmup import attempt, warm_socket_thread, warm_web_process

    with attempt("web process"):
        await socket_database_sync_to_async(warm_socket_thread)()
        for handler in list(_handlers):
            await handler.warm_up()
        await asyncio.to_thread(warm_web_process)  # a blocking Redis client: off the loop


_warm_up_task: asyncio.Future | None = None  # held, so that it is not collected mid-way


def warm_up_when_served() -> None:
    """Under daphne, run ``warm_up_web`` on its event loop once its reactor runs, beside
    the first requests (a request that comes meanwhile takes a thread that is not being
    warmed). Called by the app's ready() in a process that daphne serves (which installs
    its reactor before it imports the app); anywhere else, nothing."""
    from tts.warmup import wanted

    reactor_module = sys.modules.get("twisted.internet.reactor")
    if reactor_module is None or not wanted():
        return

    def start() -> None:
        global _warm_up_task
        loop = getattr(reactor_module, "_asyncioEventloop", None)  # daphne's asyncio reactor
        _warm_up_task = asyncio.ensure_future(warm_up_web(), loop=loop)

    reactor_module.callWhenRunning(start)


def get_asgi_application() -> ASGIHandler:
    """``django.core.asgi.get_asgi_application``, with the middleware chain entered once."""
    django.setup(set_prefix=False)
    return SyncChainASGIHandler()


# How long daphne waits for a client to answer its close frame before it drops the TCP
# connection; see steady_close_handshake.
CLOSE_HANDSHAKE_TIMEOUT_S = 5


def steady_close_handshake() -> None:
    """Under daphne, give a client CLOSE_HANDSHAKE_TIMEOUT_S to answer the server's close
    frame, where it had between 0 and 1 s.

    daphne leaves autobahn's close handshake timeout at its default, 1 s, and autobahn's
    timers round a deadline down to a whole second of the clock (txaio's batched timer:
    ``int(now + delay)``): a close frame sent at 12.95 s had its deadline at 13.00 s. A
    client that took longer than that to answer (a browser busy with audio, a slow
    network, a reader still taking in the chunks before it) had its TCP connection reset:
    the end of the stream it had not read yet (the last chunks, `done`, the close frame)
    was lost, and a browser reported 1006 instead of 1000 (tests/test_e2e.py). With 5 s
    the deadline falls 4 to 5 s after the close frame. Called by the app's ready() in a
    process that daphne serves: daphne imports the application (and so sets Django up)
    before it makes its WebSocket factory. Anywhere else, nothing."""
    try:
        from daphne.ws_protocol import WebSocketFactory
    except ImportError:  # not served by daphne
        return
    if getattr(WebSocketFactory, "_tts_steady_close", False):
        return
    made = WebSocketFactory.__init__

    def __init__(self, *args, **kwargs) -> None:
        made(self, *args, **kwargs)
        self.setProtocolOptions(closeHandshakeTimeout=CLOSE_HANDSHAKE_TIMEOUT_S)

    WebSocketFactory.__init__ = __init__
    WebSocketFactory._tts_steady_close = True


class _LogArgument:
    """A debug log line's argument, made into text when (if ever) the line is written."""

    __slots__ = ("_text",)

    def __init__(self, text: Callable[[], str]) -> None:
        self._text = text

    def __str__(self) -> str:
        return self._text()


def lazy_socket_debug_lines() -> None:
    """Under daphne, stop autobahn from pretty-printing its settings for every socket that
    opens, for a debug line that is not written unless debug logging is on.

    autobahn's ``WebSocketProtocol._connectionMade`` builds that line's argument first,
    ``pformat`` of its 29 settings: 0.19 ms on an idle core, two to three times that on
    two busy ones, on every socket's way to open, on the event loop that also serves the
    POST sent beside it (docs/benchmarks.md, P53). Here that module's ``pformat`` returns
    an argument made into text only when the line is written: the same text, when debug
    logging is on. Its other callers: a client's ``startHandshake``, for a debug line as
    well, and ``Timings.__str__``, which must return a str and keeps the real one
    (tests/test_asgi.py checks that these are all). Called by the app's ready() in a
    process that daphne serves, as steady_close_handshake is; anywhere else, nothing."""
    try:
        from autobahn.websocket import protocol
    except ImportError:  # not served by daphne
        return
    real = getattr(protocol, "pformat", None)
    if getattr(protocol, "_tts_lazy_pformat", False) or not callable(real):
        return
    protocol.pformat = lambda *args, **kwargs: _LogArgument(
        functools.partial(real, *args, **kwargs)
    )
    if hasattr(protocol, "Timings"):
        protocol.Timings.__str__ = lambda self: real(self._timings)
    protocol._tts_lazy_pformat = True
