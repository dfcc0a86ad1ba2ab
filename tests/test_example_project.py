"""The minimal example project (examples/minimal) with the app installed from this
repository the way pip installs it: its own settings, asgi and urls, a real daphne, a real
`runworker tts-generate` and Redis. Page with the tag -> POST a session -> audio frames
over the socket."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from importlib.metadata import version
from pathlib import Path

import pytest

from scripts.stack import free_port, port_open, stop_process, wait_for
from tests.conftest import ARTIFACTS, REDIS_URL
from tts.client import NarrationClient

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "minimal"
LOGS = ARTIFACTS / "logs"
TEXT = "The lamp room was dark. Ninety-one steps wound up the tower. The lens sat still."
# What a source checkout holds that a build must not see (and that would be slow to copy).
NOT_SOURCE = shutil.ignore_patterns(
    ".venv",
    ".git",
    ".run",
    "test-artifacts",
    "media",
    "staticfiles",
    "build",
    "*.egg-info",
    "__pycache__",
    "*.pyc",
    "*.sqlite3*",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
    "node_modules",
    "results",
)


def pip_install(source: Path, target: Path) -> None:
    """``pip install --no-deps --target`` of the repository: a real build (setuptools,
    pyproject.toml), offline when the environment's setuptools can build it."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        "--target",
        str(target),
        str(source),
    ]
    if int(version("setuptools").split(".")[0]) >= 77:
        command.insert(4, "--no-build-isolation")
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        pytest.fail(f"pip install of the repository failed:\n{done.stdout}\n{done.stderr}")


@pytest.fixture(scope="module")
def site_packages(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("example-install")
    source, target = root / "source", root / "site-packages"
    # A copy, so that the build's egg-info and build/ land there, not in the checkout.
    shutil.copytree(REPO, source, ignore=NOT_SOURCE)
    pip_install(source, target)
    return target


@pytest.fixture(scope="module")
def example_env(site_packages, tmp_path_factory) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "TTS_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="minimal_site.settings",
        PYTHONPATH=str(site_packages),  # the installed app only; not this checkout
        DATABASE_PATH=str(tmp_path_factory.mktemp("example-db") / "db.sqlite3"),
        REDIS_URL=REDIS_URL,
        CHANNEL_LAYER_PREFIX=f"example{uuid.uuid4().hex[:8]}",
        PYTHONUNBUFFERED="1",
    )
    return env


def example_run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=EXAMPLE, env=env, capture_output=True, text=True, timeout=120
    )


def spawn(env: dict[str, str], args: list[str], name: str) -> subprocess.Popen:
    LOGS.mkdir(parents=True, exist_ok=True)
    log = open(LOGS / f"example-{name}.log", "wb")  # noqa: SIM115 - lives with the process
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=EXAMPLE,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def log_tail(name: str, lines: int = 40) -> str:
    path = LOGS / f"example-{name}.log"
    return (
        "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""
    )


def get_json(url: str) -> dict:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())


@pytest.fixture(scope="module")
def example_site(example_env):
    migrated = example_run(example_env, "manage.py", "migrate", "--noinput", "-v", "0")
    assert migrated.returncode == 0, migrated.stderr
    port = free_port()
    daphne = spawn(
        example_env,
        ["-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "minimal_site.asgi:application"],
        "daphne",
    )
    worker = spawn(example_env, ["manage.py", "runworker", "tts-generate"], "worker")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: port_open("127.0.0.1", port), timeout=60, what="example daphne")
        wait_for(
            lambda: get_json(f"{base}/healthz").get("ok") is True,
            timeout=60,
            what="example worker (healthz)",
        )
    except TimeoutError as exc:
        stop_process(worker)
        stop_process(daphne)
        pytest.fail(f"{exc}\n--- daphne\n{log_tail('daphne')}\n--- worker\n{log_tail('worker')}")
    yield base
    stop_process(worker)
    stop_process(daphne)


def test_the_distribution_carries_every_file_of_the_app(site_packages):
    source = REPO / "tts"
    expected = {
        path.relative_to(source)
        for path in source.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }
    installed = {
        path.relative_to(site_packages / "tts")
        for path in (site_packages / "tts").rglob("*")
        if path.is_file()
    }
    assert sorted(map(str, expected - installed)) == []
    assert not (site_packages / "scenes").exists() and not (site_packages / "config").exists()


def test_the_example_imports_the_installed_app_and_passes_its_checks(example_env, site_packages):
    where = example_run(example_env, "-c", "import tts; print(tts.__file__)")
    assert Path(where.stdout.strip()).parent == site_packages / "tts", where.stderr
    checked = example_run(example_env, "manage.py", "check", "--fail-level", "WARNING")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_play_streams_audio_frames_from_a_real_worker(example_site):
    client = NarrationClient(example_site)
    session = client.create(text=TEXT)
    assert session["ws_url"].endswith(f"/ws/tts/{session['id']}/")
    result = client.stream(session["id"], timeout=60)
    assert result.error is None, f"{result.error}\n{log_tail('worker')}"
    total = result.done["total_chunks"]
    assert total >= 2 and sorted(result.audio) == list(range(total))
    assert all(len(result.audio[seq]) == result.chunks[seq]["samples"] * 2 for seq in result.audio)
    assert len(result.pcm) > 22050  # more than half a second of speech
    assert client.audio(session["id"])[:4] == b"RIFF"


def test_the_page_with_the_tag_plays_through_the_socket(example_site):
    if not (REPO / "tts" / "templatetags" / "tts.py").exists():
        pytest.skip("tts/templatetags/tts.py ({% tts_player %}) does not exist yet")
    if not (REPO / "tts" / "templates" / "tts" / "player.html").exists():
        pytest.skip(
            "the player's template and static files are not inside the app yet "
            "(tts/templates/tts/player.html, tts/static/tts/player.js): another "
            "project cannot get them from pip"
        )
    client = NarrationClient(example_site)
    status, body = client.request("GET", "/")
    page = body.decode()
    assert status == 200, page[-2000:]
    assert "data-tts-player" in page and "Ninety-one steps" in page
    assert client._cookie("csrftoken"), "the page must set the csrftoken cookie"
    sessions_url = re.search(r'data-tts-sessions-url="([^"]+)"', page).group(1)
    assert sessions_url == "/api/tts/sessions/"

    for script in re.findall(r'src="(/static/tts/[^"]+\.js)"', page):
        status, module = client.request("GET", script)
        assert status == 200, script
        for imported in re.findall(rb'from "\./([\w.-]+\.js)"', module):
            url = script.rsplit("/", 1)[0] + "/" + imported.decode()
            assert client.request("GET", url)[0] == 200, url

    # What the player does on Play: POST with the page's token, then follow the socket.
    session = client.create(text=TEXT)
    result = client.stream(session["id"], timeout=60)
    assert result.done is not None and result.audio, result.error
