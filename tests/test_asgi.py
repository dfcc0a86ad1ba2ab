"""HTTP through the project's ASGI application: the middleware chain entered once."""

from __future__ import annotations

import json
import uuid
from http.cookies import SimpleCookie

import pytest
from asgiref.testing import ApplicationCommunicator

from config.asgi import application
from tts.asgi import RequestThreads, SyncChainASGIHandler

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

HEADERS = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json")]


class Browser:
    """Cookies kept between requests, and the CSRF token sent back, as a page's script does."""

    def __init__(self, app=application) -> None:
        self.app = app
        self.cookies: dict[str, str] = {}

    async def request(self, method: str, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else b""
        headers = list(HEADERS)
        if self.cookies:
            cookie = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
            headers.append((b"cookie", cookie.encode()))
        if "csrftoken" in self.cookies:
            headers.append((b"x-csrftoken", self.cookies["csrftoken"].encode()))
        scope = {"type": "http", "http_version": "1.1", "method": method, "path": path}
        comm = ApplicationCommunicator(self.app, {**scope, "query_string": b"", "headers": headers})
        await comm.send_input({"type": "http.request", "body": data})
        response = await comm.receive_output(10)
        response["body"] = b""
        while True:  # every part of a streamed body (its last may carry none)
            part = await comm.receive_output(10)
            response["body"] += part.get("body", b"")
            if not part.get("more_body"):
                break
        await comm.wait(10)  # the request's end too (its request_finished, its thread back)
        for name, value in response["headers"]:
            if name.lower() == b"set-cookie":
                for morsel in SimpleCookie(value.decode()).values():
                    self.cookies[morsel.key] = morsel.value
        return response


async def test_a_request_goes_to_a_thread_once_for_all_the_middleware(thread_hops):
    browser = Browser()
    await browser.request("GET", "/api/tts/voices/")  # its CSRF cookie
    thread_hops.clear()
    response = await browser.request("POST", "/api/tts/sessions/", {"text": "Hello there."})
    assert response["status"] == 201, response["body"]
    # Django's stock handler goes to a thread and back for every middleware's request and
    # response hooks (about thirty trips here), and once more for request_started before
    # them; this one enters the whole chain once, and sends request_started in that trip
    # (P91). The other: the response's close, which sends request_finished.
    assert len(thread_hops) == 2, thread_hops


async def test_the_handle_copied_from_django_is_the_one_it_was_copied_from():
    """SyncChainASGIHandler.handle is Django 5.2's but for where request_started is sent:
    a Django whose handle has changed must be read again before this passes."""
    import hashlib
    import inspect

    from django.core.handlers.asgi import ASGIHandler

    source = inspect.getsource(ASGIHandler.handle).encode()
    assert hashlib.sha256(source).hexdigest() == (
        "98faeb5bef800331e6a8002fbc96b30e4122a23438ae45a047190a531ea11323"
    ), "django.core.handlers.asgi.ASGIHandler.handle changed: compare tts.asgi's copy"


async def test_a_request_refused_before_its_chain_still_sends_started_and_finished(
    signals_seen,
):
    """A request Django cannot make (a query string that is not UTF-8: 400) never enters
    the chain: it sends request_started as Django does, and request_finished once."""
    scope = {"type": "http", "http_version": "1.1", "method": "GET"}
    scope |= {"path": "/api/tts/voices/", "query_string": b"q=\xff", "headers": HEADERS}
    comm = ApplicationCommunicator(application, scope)
    await comm.send_input({"type": "http.request", "body": b""})
    response = await comm.receive_output(10)
    while (await comm.receive_output(10)).get("more_body"):
        pass
    await comm.wait(10)
    assert response["status"] == 400
    assert signals_seen == ["started", "finished"]


async def test_request_started_is_sent_on_the_requests_thread_before_its_view():
    import threading

    from django.core.signals import request_started

    from tts import views

    seen: list[tuple[str, str]] = []

    def started(sender, scope=None, **kwargs):
        seen.append(("request_started", threading.current_thread().name, scope["path"]))

    def all_voices():  # what the view reads
        seen.append(("view", threading.current_thread().name, "/api/tts/voices/"))
        return real()

    real = views.all_voices
    request_started.connect(started)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(views, "all_voices", all_voices)
            response = await Browser().request("GET", "/api/tts/voices/")
    finally:
        request_started.disconnect(started)
    assert response["status"] == 200
    (signal, thread, path), view = seen  # once, and in the chain's trip (P91)
    assert (signal, path) == ("request_started", "/api/tts/voices/")
    assert view == ("view", thread, path) and thread.startswith("django-request")


@pytest.fixture
def signals_seen():
    """request_started and request_finished, in the order they were sent."""
    from django.core.signals import request_finished, request_started

    seen: list[str] = []

    def started(**kwargs):
        seen.append("started")

    def finished(**kwargs):
        seen.append("finished")

    request_started.connect(started)
    request_finished.connect(finished)
    yield seen
    request_started.disconnect(started)
    request_finished.disconnect(finished)


async def test_a_client_gone_while_its_view_runs_pairs_started_and_finished_once(signals_seen):
    """The client goes while the view runs: Django cancels the request's task, and sends
    request_finished itself; request_started, sent as the chain began, is not sent again."""
    import asyncio
    import time

    from tts import views

    real = views.all_voices

    def slow_voices():
        signals_seen.append("view")
        time.sleep(0.3)
        return real()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(views, "all_voices", slow_voices)
        scope = {"type": "http", "http_version": "1.1", "method": "GET", "query_string": b""}
        scope |= {"path": "/api/tts/voices/", "headers": HEADERS}
        comm = ApplicationCommunicator(application, scope)
        await comm.send_input({"type": "http.request", "body": b""})
        for _ in range(100):  # until the view runs
            if "view" in signals_seen:
                break
            await asyncio.sleep(0.01)
        await comm.send_input({"type": "http.disconnect"})
        await comm.wait(10)
    assert signals_seen == ["started", "view", "finished"]


async def test_a_request_cancelled_before_its_chain_sends_started_then_finished(signals_seen):
    from asgiref.sync import sync_to_async
    from django.test import RequestFactory

    end = sync_to_async(SyncChainASGIHandler()._end_cancelled)  # as handle calls it
    request = RequestFactory().get("/")  # never through the chain: no tts_started
    request.scope = {"type": "http", "path": "/"}
    await end(request)
    assert signals_seen == ["started", "finished"]
    request.tts_started = True
    await end(request)
    assert signals_seen == ["started", "finished", "finished"]


async def test_errors_and_streamed_audio_go_through_the_sync_chain():
    from channels.db import database_sync_to_async

    from tts import services

    browser = Browser()
    missing = await browser.request("GET", f"/api/tts/sessions/{uuid.uuid4()}/")
    assert missing["status"] == 404
    assert json.loads(missing["body"])["error"]["code"] == "no_such_session"
    refused = await browser.request("POST", "/api/tts/sessions/", {"text": "Hello there."})
    assert refused["status"] == 403  # no CSRF cookie yet: Django's CSRF check still runs
    await browser.request("GET", "/api/tts/voices/")
    bad = await browser.request("POST", "/api/tts/sessions/", {"text": ""})
    assert bad["status"] == 400 and json.loads(bad["body"])["error"]["code"] == "empty_text"

    created = await browser.request("POST", "/api/tts/sessions/", {"text": "Hello there."})
    session = json.loads(created["body"])
    await database_sync_to_async(services.session_run)(session_id=session["id"], worker="test")
    wav = await browser.request("GET", session["audio_url"])  # an async streaming response
    assert wav["status"] == 200 and wav["body"][:4] == b"RIFF" and len(wav["body"]) > 1000


async def test_a_post_is_known_to_be_in_flight_while_it_is_answered():
    """Pending sockets wait for the POSTs their process is answering (tts.waiting)."""
    from django.core.signals import request_started

    from tts import waiting

    seen = []

    def started(**kwargs):
        seen.append(waiting._posts > 0)

    request_started.connect(started)
    try:
        browser = Browser()
        await browser.request("GET", "/api/tts/voices/")
        bad = await browser.request("POST", "/api/tts/sessions/", {"text": ""})
        created = await browser.request("POST", "/api/tts/sessions/", {"text": "Hello there."})
    finally:
        request_started.disconnect(started)
    assert (bad["status"], created["status"]) == (400, 201)
    assert seen == [False, True, True]
    assert waiting._posts == 0  # answered, refused or not


# Long-lived request threads, and their database connections ------------------------------


@pytest.fixture
def new_handler():
    """A handler of its own (its TTS_REQUEST_THREADS read now); its threads' kept
    connections are closed afterwards, not left to the garbage collector."""
    made: list[SyncChainASGIHandler] = []

    def make() -> SyncChainASGIHandler:
        made.append(SyncChainASGIHandler())
        return made[-1]

    yield make
    for handler in made:
        handler.threads.close_connections()


@pytest.fixture
def request_threads_seen(monkeypatch):
    """The thread each request ran on, and every database connection opened meanwhile."""
    import threading

    from django.core.signals import request_started
    from django.db.backends.signals import connection_created

    seen = {"threads": [], "connections": 0}

    def started(**kwargs):
        seen["threads"].append(threading.current_thread())

    def opened(**kwargs):
        seen["connections"] += 1

    request_started.connect(started)
    connection_created.connect(opened)
    yield seen
    request_started.disconnect(started)
    connection_created.disconnect(opened)


def _own_connections() -> bool:
    """Not pooled and no CONN_MAX_AGE of its own: tts keeps the threads' connections."""
    from django.db import connection

    from tts.db import left_to_its_settings

    return not left_to_its_settings(connection.settings_dict)


async def _posts(browser: Browser, n: int) -> None:
    for i in range(n):
        response = await browser.request("POST", "/api/tts/sessions/", {"text": f"Take {i}."})
        assert response["status"] == 201, response["body"]


async def test_requests_run_on_long_lived_threads_that_keep_their_connection(
    settings, request_threads_seen, new_handler
):
    settings.TTS_REQUEST_THREADS, settings.TTS_WEB_CONN_MAX_AGE = 2, 60
    browser = Browser(new_handler())
    await browser.request("GET", "/api/tts/voices/")  # the CSRF cookie
    request_threads_seen.update(threads=[], connections=0)
    await _posts(browser, 5)
    threads = request_threads_seen["threads"]
    assert len(threads) == 5 and len(set(threads)) == 1  # one at a time: the same thread
    assert threads[0].name.startswith("django-request") and threads[0].is_alive()
    if _own_connections():
        assert request_threads_seen["connections"] <= 1  # opened once, then kept


async def test_without_request_threads_every_request_gets_a_fresh_thread(
    settings, request_threads_seen, new_handler
):
    settings.TTS_REQUEST_THREADS = 0  # Django's own behaviour
    browser = Browser(new_handler())
    await browser.request("GET", "/api/tts/voices/")
    request_threads_seen.update(threads=[], connections=0)
    await _posts(browser, 3)
    threads = request_threads_seen["threads"]
    assert len(threads) == len(set(threads)) == 3  # made for the request, gone after it
    assert not any(t.name.startswith("django-request") for t in threads)
    if _own_connections():
        assert request_threads_seen["connections"] == 3  # each request opened its own


async def test_a_kept_connection_ends_with_its_max_age(settings, request_threads_seen, new_handler):
    settings.TTS_REQUEST_THREADS, settings.TTS_WEB_CONN_MAX_AGE = 1, 0
    browser = Browser(new_handler())
    await browser.request("GET", "/api/tts/voices/")
    request_threads_seen.update(threads=[], connections=0)
    await _posts(browser, 3)
    assert len(set(request_threads_seen["threads"])) == 1
    if _own_connections():
        assert request_threads_seen["connections"] == 3  # 0: closed after every request


async def test_request_threads_are_lent_one_request_at_a_time_and_never_waited_for():
    threads = RequestThreads(2)
    first, second = threads.take(), threads.take()
    assert first is not None and second is not None and first is not second
    assert threads.take() is None  # all lent out: the caller runs as Django would
    threads.give_back(first)
    assert threads.take() is first


async def test_a_cancelled_request_lends_its_thread_again_only_once_it_is_idle(
    settings, monkeypatch, new_handler
):
    """A request cancelled while its view runs (its client gone, a shutdown): asgiref
    cannot stop the view, so its thread must not go to the next request until it ends."""
    import asyncio
    import threading
    import time

    from asgiref.sync import sync_to_async

    settings.TTS_REQUEST_THREADS = 1
    handler = new_handler()
    started = threading.Event()

    def slow_view():
        started.set()
        time.sleep(0.5)

    async def handle(scope, receive, send):
        await sync_to_async(slow_view)()  # on the request's lent thread

    monkeypatch.setattr(handler, "handle", handle)
    request = asyncio.ensure_future(handler({"type": "http"}, None, None))
    while not started.is_set():
        await asyncio.sleep(0.01)
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    assert handler.threads.take() is None  # still running the view: not lent
    await asyncio.sleep(0.7)
    assert handler.threads.take() is not None  # idle again: lent


async def test_a_request_finding_every_thread_busy_runs_on_a_fresh_one_at_once(
    settings, monkeypatch, new_handler
):
    import asyncio
    import threading
    import time

    from asgiref.sync import sync_to_async

    settings.TTS_REQUEST_THREADS = 1
    handler = new_handler()
    ran_on: dict[str, str] = {}
    started = threading.Event()

    def view(name: str, seconds: float) -> None:
        ran_on[name] = threading.current_thread().name
        started.set()
        time.sleep(seconds)

    async def handle(scope, receive, send):
        await sync_to_async(view)(scope["name"], scope["seconds"])

    monkeypatch.setattr(handler, "handle", handle)
    slow = asyncio.ensure_future(handler({"type": "http", "name": "slow", "seconds": 0.6}, 0, 0))
    while not started.is_set():
        await asyncio.sleep(0.01)
    begun = time.monotonic()
    await handler({"type": "http", "name": "quick", "seconds": 0}, None, None)
    assert time.monotonic() - begun < 0.4  # did not wait for the busy thread
    assert not slow.done()
    assert ran_on["slow"].startswith("django-request")
    assert not ran_on["quick"].startswith("django-request")  # Django's own fresh thread
    await slow


async def test_autobahn_formats_its_socket_settings_only_for_a_debug_line_written():
    """Under daphne, autobahn's per-socket debug line of its settings (``pformat`` of 29
    of them, on every socket's way to open) is formatted only if written, with the same
    text; its Timings still print as text."""
    from pprint import pformat

    from autobahn.websocket import protocol

    from tts.asgi import lazy_socket_debug_lines

    lazy_socket_debug_lines()
    lazy_socket_debug_lines()  # once is enough; a second call changes nothing

    class Counted:
        formatted = 0

        def __repr__(self) -> str:
            Counted.formatted += 1
            return "counted"

    settings_line = [("autoPingInterval", 20, "WebSocketServerFactory"), ("x", Counted(), "y")]
    expected, Counted.formatted = pformat(settings_line), 0
    argument = protocol.pformat(settings_line)
    assert Counted.formatted == 0  # nothing formatted for a line that is not written
    assert f"{argument}" == expected and Counted.formatted == 1  # as a line does
    assert str(argument) == expected

    timings = protocol.Timings()
    timings.track("open")
    assert isinstance(str(timings), str) and "open" in str(timings)


async def test_autobahn_uses_pformat_only_where_a_lazy_argument_is_right():
    """If an autobahn release used its protocol module's ``pformat`` anywhere but as a
    debug line's argument (or in ``Timings.__str__``, which keeps the real one), the lazy
    stand-in would break it: this fails first, before sockets do."""
    import ast
    import inspect

    from autobahn.websocket import protocol

    tree = ast.parse(inspect.getsource(protocol))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "pformat"
    ]
    assert calls  # the settings line this works around is still there
    for call in calls:
        parent = parents[call]
        as_log_argument = (
            isinstance(parent, ast.keyword)
            and isinstance(parents[parent], ast.Call)
            and getattr(parents[parent].func, "attr", None) == "debug"
        )
        in_timings_str = isinstance(parent, ast.Return) and any(
            isinstance(node, ast.ClassDef) and node.name == "Timings" and call in ast.walk(node)
            for node in ast.walk(tree)
        )
        assert as_log_argument or in_timings_str, f"pformat used at line {call.lineno}"
