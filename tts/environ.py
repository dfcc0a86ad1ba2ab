"""A boolean from the environment, with the words this project accepts everywhere: for
code that runs before Django's settings exist (``tts.loops``, in daphne's launcher) and
for the settings themselves (``config/env.py``)."""

from __future__ import annotations

import os
from collections.abc import Mapping

TRUE = frozenset({"1", "true", "yes", "on"})
FALSE = frozenset({"0", "false", "no", "off", ""})


def read_bool(name: str, default: bool, environ: Mapping[str, str] | None = None) -> bool:
    """``environ[name]`` (default: the process's environment) as a boolean; ``default``
    when unset. Any other word is refused by name (ValueError)."""
    raw = (os.environ if environ is None else environ).get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise ValueError(f"{name} must be a boolean (1/0, true/false), got {raw!r}")
