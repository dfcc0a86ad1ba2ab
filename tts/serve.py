"""daphne on uvloop's event loop: ``python -m tts.serve`` takes daphne's own arguments.

    python -m tts.serve -b 0.0.0.0 -p 8000 config.asgi:application

daphne makes the event loop that Twisted runs on when its server module is imported,
before it reads its arguments or imports the application, so the loop has to be chosen
before daphne is imported at all (``tts.loops``). Everything else is daphne's command
line as it is; ``python -m daphne`` still works, on asyncio's own loop.
"""

from __future__ import annotations

import sys

from tts import loops


def main() -> None:
    try:
        loop = loops.install()
    except ValueError as exc:
        raise SystemExit(f"tts.serve: {exc}") from None
    from daphne.cli import CommandLineInterface

    # Before daphne's logging is set up, and Django's: a line of its own on stderr.
    print(f"tts.serve: daphne on {loop}'s event loop", file=sys.stderr, flush=True)
    sys.argv[0] = "daphne"
    CommandLineInterface.entrypoint()


if __name__ == "__main__":
    main()
