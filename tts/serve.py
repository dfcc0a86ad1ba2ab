"""daphne on uvloop's event loop: ``python -m tts.serve`` takes daphne's own arguments.

    python -m tts.serve -b 0.0.0.0 -p 8000 config.asgi:application

daphne makes the event loop that Twisted runs on when its server module is imported,
before it reads its arguments or imports the application, so the loop has to be chosen
before daphne is imported at all (``tts.loops``). Everything else is daphne's command
line as it is; ``python -m daphne`` still works, on asyncio's own loop.
"""

from __future__ import annotations

import os
import sys

from tts import loops


def main() -> None:
    try:
        loops.install_uvloop()
    except ValueError as exc:
        raise SystemExit(f"tts.serve: {exc}") from None
    from daphne import server
    from daphne.cli import CommandLineInterface

    # The loop daphne will run on, as made (not as asked for): a line of its own on
    # stderr, before daphne's logging or Django's is set up.
    loop = "uvloop" if type(server.twisted_loop).__module__.startswith("uvloop") else "asyncio"
    print(f"tts.serve: daphne (pid {os.getpid()}) on {loop}'s event loop", file=sys.stderr)
    sys.stderr.flush()
    sys.argv[0] = "daphne"
    CommandLineInterface.entrypoint()


if __name__ == "__main__":
    main()
