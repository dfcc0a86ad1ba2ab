"""daphne on uvloop's event loop: ``python -m tts.serve`` takes daphne's own arguments.

    python -m tts.serve -b 0.0.0.0 -p 8000 config.asgi:application

daphne makes the event loop that Twisted runs on when its server module is imported,
before it reads its arguments or imports the application, so the loop has to be chosen
before daphne is imported at all (``tts.loops``). Everything else is daphne's command
line as it is; ``python -m daphne`` still works, on asyncio's own loop. Once daphne has
imported the application, as its server starts, the heap built so far is kept out of the
garbage collector's passes (``tts.heap``, ``TTS_GC_FREEZE``).
"""

from __future__ import annotations

import os
import sys

from tts import cpus, heap, loops, tlsrecords


def main() -> None:
    try:
        pinned = cpus.pin_from(cpus.WEB)  # before daphne's and Django's threads start
        loops.install_uvloop()
        freeze = heap.freeze_wanted()
        tlsrecords.install()  # if daphne serves TLS itself (-e ssl:...): small first records
    except ValueError as exc:
        raise SystemExit(f"tts.serve: {exc}") from None
    from daphne import server
    from daphne.cli import CommandLineInterface

    # The loop daphne will run on, as made (not as asked for): a line of its own on
    # stderr, before daphne's logging or Django's is set up.
    loop = "uvloop" if type(server.twisted_loop).__module__.startswith("uvloop") else "asyncio"
    say(f"daphne (pid {os.getpid()}) on {loop}'s event loop")
    if pinned is not None:
        say(f"daphne (pid {os.getpid()}) on CPUs {cpus.format_list(pinned)} ({cpus.WEB})")

    class Server(server.Server):
        def run(self) -> None:
            # daphne's command line has imported the application by now (and Django with
            # it): what the process holds from here on is what it serves with.
            if freeze:
                heap.load_urlconf()
                frozen, ms = heap.freeze_startup_heap()
                say(
                    f"daphne (pid {os.getpid()}): {frozen} objects of its start kept out of "
                    f"the collector ({ms:.0f} ms)"
                )
            super().run()

    class Daphne(CommandLineInterface):
        server_class = Server

    sys.argv[0] = "daphne"
    Daphne.entrypoint()


def say(line: str) -> None:
    print(f"tts.serve: {line}", file=sys.stderr)
    sys.stderr.flush()


if __name__ == "__main__":
    main()
