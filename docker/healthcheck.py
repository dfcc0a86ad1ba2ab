"""Container health check for both roles of the image (the Dockerfile's HEALTHCHECK).

    python docker/healthcheck.py [web|worker]      (default: $TTS_ROLE, else web)

web: GET /healthz on this container. Healthy when the database and the channel layer
answer; a missing worker is the workers' problem, not a reason to restart the web server
(the JSON still says ``"workers": 0``, for monitoring).

worker: healthy while this container's worker keeps its heartbeat key in Redis fresh
(the recovery sweep refreshes it every TTS_SWEEP_INTERVAL seconds; see tts.health).

Exit status 0 healthy, 1 not, as Docker expects. Standard library plus redis only: it
runs every 30 s and must not import Django.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request

WORKER_KEY = "tts:worker:"  # tts.health.WORKER_KEY


def probe_host() -> str:
    """A Host header that ALLOWED_HOSTS accepts (the first entry, wildcards made concrete)."""
    first = (os.environ.get("ALLOWED_HOSTS") or "localhost").split(",")[0].strip()
    if first in ("", "*"):
        return "localhost"
    return first.lstrip(".") or "localhost"


def check_web(timeout: float = 4.0) -> tuple[bool, str]:
    url = f"http://127.0.0.1:{os.environ.get('PORT', '8000')}/healthz"
    # As if through the TLS proxy: HTTPS=1 redirects plain http everywhere but /healthz.
    headers = {"Host": probe_host(), "X-Forwarded-Proto": "https"}
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        body = exc.read()
    except OSError as exc:
        return False, f"{url}: {exc}"
    try:
        report = json.loads(body)
    except ValueError:
        return False, f"{url}: not JSON: {body[:200]!r}"
    healthy = bool(report.get("database")) and bool(report.get("channel_layer"))
    return healthy, json.dumps(report)


def redis_client():
    import redis
    from redis.sentinel import Sentinel

    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    sentinels = [s.strip() for s in os.environ.get("REDIS_SENTINELS", "").split(",") if s.strip()]
    options = {"socket_timeout": 3, "socket_connect_timeout": 3}
    if not sentinels:
        return redis.Redis.from_url(url, **options)
    parsed = urllib.parse.urlparse(url)
    hosts = [(h.rpartition(":")[0].strip("[]"), int(h.rpartition(":")[2])) for h in sentinels]
    sentinel_kwargs = dict(options)
    if os.environ.get("REDIS_SENTINEL_PASSWORD"):
        sentinel_kwargs["password"] = os.environ["REDIS_SENTINEL_PASSWORD"]
    return Sentinel(hosts, sentinel_kwargs=sentinel_kwargs).master_for(
        os.environ.get("REDIS_SENTINEL_MASTER", "mymaster"),
        db=int(parsed.path.strip("/") or 0),
        username=parsed.username or None,
        password=parsed.password or None,
        **options,
    )


def check_worker() -> tuple[bool, str]:
    pattern = f"{WORKER_KEY}{socket.gethostname()}:*"
    try:
        beating = next(iter(redis_client().scan_iter(pattern, count=1000)), None)
    except Exception as exc:  # noqa: BLE001 - any failure is "unhealthy", with the reason
        return False, f"redis: {exc}"
    if beating is None:
        return False, f"no heartbeat key {pattern}"
    return True, beating.decode() if isinstance(beating, bytes) else str(beating)


def main(argv: list[str]) -> int:
    role = argv[1] if len(argv) > 1 else os.environ.get("TTS_ROLE", "web")
    if role not in ("web", "worker"):
        print(f"unknown role {role!r}; use web or worker", file=sys.stderr)
        return 2
    healthy, detail = check_web() if role == "web" else check_worker()
    print(f"{role}: {'healthy' if healthy else 'UNHEALTHY'}: {detail}")
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
