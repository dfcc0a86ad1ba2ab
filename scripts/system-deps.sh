#!/usr/bin/env bash
# Debian packages the app and its tests use: espeak-ng (the offline voice) and chromium
# (browser tests). Installed when missing and we are root; otherwise say how.
set -euo pipefail
missing=()
command -v espeak-ng >/dev/null || missing+=(espeak-ng)
if [ "${SKIP_BROWSER:-0}" != "1" ]; then command -v chromium >/dev/null || missing+=(chromium); fi
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  echo "Installing ${missing[*]} (apt-get)…"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "Missing: ${missing[*]}. Install with: sudo apt-get install ${missing[*]}" >&2
  echo "(Without espeak-ng its voices report themselves unavailable; browser tests skip.)" >&2
fi
