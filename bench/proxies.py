"""A TLS-terminating proxy in front of daphne, as production puts one
(`bench/run.py --path-tls --path-tls-proxy nginx|caddy`): the nginx configuration that
docs/deployment.md gives, or Caddy as docker-compose.yml's tls profile runs it (there
`caddy reverse-proxy`; here the same as a Caddyfile, with a certificate of its own), each
with bench/tls.py's throwaway certificate on 127.0.0.1.
The browser reaches the proxy over TLS (through bench/netdelay.py's modelled path); the
proxy reaches daphne over plain http on loopback, as on one host. The proxy writes the
TLS records the browser waits for, so it decides whether the first part of a chunk
comes in the first round trip (P90).

Only what a bench on a non-standard port needs differs from the documented setups:
nginx passes the ``Host`` header with its port (``$http_host``, not ``$host``), so that
Django's CSRF check sees the origin the browser sent; daphne trusts the proxy's
``X-Forwarded-Proto`` (``--proxy-headers``, as the Compose file's
``DAPHNE_PROXY_HEADERS=1``)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from scripts.stack import port_open, stop_process, wait_for

KINDS = ("daphne", "nginx", "caddy")

NGINX = """\
worker_processes 1;
{user}
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    map $http_upgrade $connection_upgrade {{ default upgrade; "" close; }}
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_buffer_size {buffer};
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_read_timeout 1h;
            proxy_buffering off;
            client_max_body_size 1m;
        }}
    }}
}}
"""

CADDY = """\
{{
    admin off
    auto_https disable_redirects
    storage file_system {dir}/caddy-data
}}
https://127.0.0.1:{port} {{
    bind 127.0.0.1
    tls {cert} {key}
    reverse_proxy 127.0.0.1:{upstream}
}}
"""


def missing(kind: str) -> str | None:
    """Why ``kind`` cannot run here (its program is not installed), or None."""
    if kind != "daphne" and shutil.which(kind) is None:
        return f"--path-tls-proxy {kind}: `{kind}` is not installed (apt-get install {kind})"
    return None


def start(
    kind: str,
    directory: Path,
    log_path: Path,
    *,
    port: int,
    upstream: int,
    cert: Path,
    key: Path,
    nginx_buffer: str = "16k",
) -> subprocess.Popen:
    """Start ``kind`` (nginx or caddy) in the foreground, serving TLS on 127.0.0.1:``port``
    and proxying to daphne on ``upstream``: its configuration and files in ``directory``,
    its output in ``log_path``. Returns once it serves; TimeoutError, naming its log, if
    it ends or does not serve within 30 s (stopped then)."""
    directory.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    values = {"dir": directory, "port": port, "upstream": upstream, "cert": cert, "key": key}
    if kind == "nginx":
        config = directory / "nginx.conf"
        user = "user root;" if os.geteuid() == 0 else ""  # its temp files in our directory
        config.write_text(NGINX.format(**values, user=user, buffer=nginx_buffer))
        command = ["nginx", "-p", str(directory), "-c", str(config), "-g", "daemon off;"]
    elif kind == "caddy":
        config = directory / "Caddyfile"
        config.write_text(CADDY.format(**values))
        command = ["caddy", "run", "--config", str(config), "--adapter", "caddyfile"]
    else:
        raise ValueError(kind)
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(directory)}  # caddy's own files
    with log_path.open("ab") as log:  # a group of its own: stop() ends nginx's workers too
        proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    what = f"{kind} (its log: {log_path})"
    try:  # an early end is said at once, not after the whole wait
        wait_for(
            lambda: port_open("127.0.0.1", port) or proc.poll() is not None, timeout=30, what=what
        )
        if proc.poll() is not None:
            raise TimeoutError(f"{what} ended with {proc.returncode} before it served")
    except BaseException:
        stop(proc)
        raise
    return proc


def stop(proc: subprocess.Popen) -> None:
    """The proxy and every process it started (nginx's workers)."""
    stop_process(proc)
