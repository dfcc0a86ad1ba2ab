#!/bin/sh
# Container entry point: one image, two roles (docs/deployment.md).
#
#   web      apply migrations (unless MIGRATE_ON_START=0), then serve HTTP and WebSockets
#            with daphne on $PORT (python -m tts.serve: daphne on uvloop, TTS_UVLOOP)
#   worker   python manage.py runworker tts-generate (loads the voices once, then narrates)
#   migrate  apply migrations and exit (a release step when several web processes start)
#   ...      anything else runs as given: python manage.py createsuperuser, sh, ...
#
# The role is the first argument, else $TTS_ROLE, else web. The container health check
# (docker/healthcheck.py) reads the same $TTS_ROLE.
set -eu

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"

role="${1:-${TTS_ROLE:-web}}"
[ "$#" -gt 0 ] && shift

migrate() {
    "$PYTHON" manage.py migrate --noinput
}

# Sockets: a narration can be listened to for hours (a client that is cut off resumes
# with ?after= anyway); pings keep idle sockets open through proxies that drop them after
# 60 s. daphne's message size limit bounds outgoing messages too, and one chunk of audio
# (a long sentence, a slow voice) can pass daphne's 1 MiB default: 16 MiB. Clients only
# send small JSON ({"type": "ping"}, {"type": "cancel"}), so incoming frames stay small.
web() {
    if [ "${MIGRATE_ON_START:-1}" = "1" ]; then
        migrate
    fi
    if [ "${DAPHNE_PROXY_HEADERS:-0}" = "1" ]; then
        set -- --proxy-headers "$@"
    fi
    exec "$PYTHON" -m tts.serve \
        --bind "${DAPHNE_BIND:-0.0.0.0}" \
        --port "${PORT:-8000}" \
        --websocket_timeout "${DAPHNE_WEBSOCKET_TIMEOUT:-86400}" \
        --websocket_connect_timeout "${DAPHNE_WEBSOCKET_CONNECT_TIMEOUT:-10}" \
        --ping-interval "${DAPHNE_PING_INTERVAL:-20}" \
        --ping-timeout "${DAPHNE_PING_TIMEOUT:-30}" \
        --websocket-max-message-size "${DAPHNE_WEBSOCKET_MAX_MESSAGE_SIZE:-16777216}" \
        --websocket-max-frame-size "${DAPHNE_WEBSOCKET_MAX_FRAME_SIZE:-65536}" \
        --application-close-timeout "${DAPHNE_APPLICATION_CLOSE_TIMEOUT:-10}" \
        --verbosity "${DAPHNE_VERBOSITY:-1}" \
        "$@" \
        "${ASGI_APPLICATION_PATH:-config.asgi:application}"
}

case "$role" in
    web) web "$@" ;;
    worker) exec "$PYTHON" manage.py runworker tts-generate "$@" ;;
    migrate) migrate ;;
    *) exec "$role" "$@" ;;
esac
