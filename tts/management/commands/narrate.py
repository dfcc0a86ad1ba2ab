"""`manage.py narrate`: narrate a story, some scenes, or everything, in this process or by
the workers; resumable, with a progress bar, WAV files and a JSON summary.

Exit status: 0 when every narration completed, 1 when any failed (a summary says
which and why), 2 for bad usage (unknown story, scene or voice), 130 when interrupted.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.text import slugify

from tts import batch, broadcast, health
from tts.errors import InvalidInput, NotFound
from tts.services import voice_resolve

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class Command(BaseCommand):
    help = (
        "Narrate scenes in batch: --story SLUG, --scene ID ..., or --all. Runs in this "
        "process unless --via-workers; a second run continues an interrupted one."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        which = parser.add_mutually_exclusive_group(required=True)
        which.add_argument(
            "--story",
            action="append",
            metavar="SLUG",
            help="Narrate every scene of this story (repeatable).",
        )
        which.add_argument(
            "--scene", nargs="+", type=int, metavar="ID", help="Narrate these scenes."
        )
        which.add_argument("--all", action="store_true", help="Narrate every scene.")
        parser.add_argument(
            "--missing",
            action="store_true",
            help="Skip scenes that already have a completed narration of their "
            "current text in this voice.",
        )
        parser.add_argument(
            "--voice",
            help="Voice id for every scene (default: each scene's voice, else TTS_DEFAULT_VOICE).",
        )
        parser.add_argument(
            "--out", type=Path, metavar="DIR", help="Write one WAV per scene into DIR/<story>/."
        )
        parser.add_argument(
            "--join",
            action="store_true",
            help="With --out, also write one WAV per story: DIR/<story>.wav.",
        )
        parser.add_argument(
            "--json", action="store_true", help="Print a machine-readable summary on stdout."
        )
        parser.add_argument(
            "--via-workers",
            action="store_true",
            help="Dispatch to the running workers and follow their progress.",
        )
        parser.add_argument(
            "--timeout",
            type=float,
            metavar="SECONDS",
            help="With --via-workers, stop following after SECONDS.",
        )
        parser.add_argument(
            "--no-progress",
            action="store_true",
            help="No progress bar (it is off anyway when stdout is not a terminal).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        self.options, self.stories = options, []
        if options["join"] and not options["out"]:
            raise CommandError("--join needs --out DIR.", returncode=EXIT_USAGE)
        if options["timeout"] is not None and not options["via_workers"]:
            raise CommandError("--timeout applies to --via-workers only.", returncode=EXIT_USAGE)
        if options["voice"]:
            try:
                voice_resolve(voice_id=options["voice"])
            except InvalidInput as exc:
                raise CommandError(exc.message, returncode=EXIT_USAGE) from None
        subjects = self.select()
        owner = batch.CLI_OWNER
        narrations = [
            batch.narration_plan(
                subject=s, voice_id=options["voice"], owner=owner, skip_complete=options["missing"]
            )
            for s in subjects
        ]
        run = batch.BatchRun(
            narrations, in_process=not options["via_workers"], timeout_s=options["timeout"]
        )
        with _logs_to_stderr(), self.channel_layer_checked():
            interrupted = self.execute_run(run, owner)
            broadcast.flush()  # listeners (the admin, a player) hear the last events
        summary = self.summarize(run, interrupted=interrupted)
        self.report(summary)
        if interrupted:
            raise CommandError(
                "Interrupted; run the same command again to continue.", returncode=EXIT_INTERRUPTED
            )
        if not summary["ok"]:
            raise CommandError(self.failure_text(summary), returncode=EXIT_FAILED)

    # Input -------------------------------------------------------------------------------

    def select(self) -> list[Any]:
        options = self.options
        try:
            if options["scene"]:
                return batch.scenes_by_id(options["scene"])
            if options["story"]:
                return [
                    s
                    for slug in dict.fromkeys(options["story"])
                    for s in batch.scenes_of_story(slug)
                ]
            return batch.scenes_all()
        except NotFound as exc:
            raise CommandError(exc.message, returncode=EXIT_USAGE) from None

    @contextmanager
    def channel_layer_checked(self):
        """Say once what is missing, rather than a failed broadcast per chunk."""
        report = health.check()
        if self.options["via_workers"] and not report["workers"]:
            self.stderr.write(
                "No narration worker seems to be running; start one with "
                "`python manage.py runworker tts-generate` (waiting anyway)."
            )
        if self.options["via_workers"] or report["channel_layer"]:
            yield
            return
        self.stderr.write(
            "The channel layer (Redis) is unreachable: nobody can listen to "
            "this run live, but every chunk is stored as usual."
        )
        broadcasts = logging.getLogger("tts.broadcast")
        level = broadcasts.level
        broadcasts.setLevel(logging.ERROR)
        try:
            yield
        finally:
            broadcasts.setLevel(level)

    # Running -----------------------------------------------------------------------------

    def execute_run(self, run: batch.BatchRun, owner: Any) -> bool:
        """Run the batch with a progress bar; True when interrupted (Ctrl-C, SIGTERM)."""
        with self.progress_bar(run) as update, _sigterm_as_interrupt():
            run.on_progress = update
            try:
                run.run(owner=owner)
            except KeyboardInterrupt:
                run.interrupt()
                return True
        return False

    @contextmanager
    def progress_bar(self, run: batch.BatchRun):
        work = [n for n in run.narrations if n.needs_work]
        shown = bool(work) and self.stdout.isatty() and not self.options["no_progress"]
        if not shown:
            yield None
            return
        from tqdm import tqdm

        bar = tqdm(
            total=sum(n.total_chunks for n in work),
            initial=sum(n.stored_before for n in work),
            unit="chunk",
            desc=f"Narrating {len(work)} scene{'s' if len(work) != 1 else ''}",
            file=sys.stderr,
            dynamic_ncols=True,
        )

        def update(progress: batch.Progress) -> None:
            audio_s = progress.audio_ms / 1000
            speed = audio_s / progress.elapsed_s if progress.elapsed_s else 0
            bar.set_postfix_str(f"{audio_s:.1f} s audio, {speed:.1f}x real time", refresh=False)
            bar.total = max(bar.total, progress.total_chunks)
            bar.update(progress.done_chunks - bar.n)

        try:
            yield update
        finally:
            bar.close()

    # Output ------------------------------------------------------------------------------

    def summarize(self, run: batch.BatchRun, *, interrupted: bool) -> dict[str, Any]:
        scenes = [self.scene_summary(n) for n in run.narrations]
        if self.options["out"] and not interrupted:
            self.write_files(run.narrations, scenes)
        failed = [s for s in scenes if s["error"]]
        return {
            "ok": not failed and not interrupted,
            "interrupted": interrupted,
            "mode": "workers" if self.options["via_workers"] else "in-process",
            "scenes": scenes,
            "stories": self.stories,
            "totals": {
                "scenes": len(scenes),
                "completed": sum(s["status"] == "completed" for s in scenes),
                "skipped": sum(s["plan"] == "complete" for s in scenes),
                "resumed": sum(s["plan"] == "resume" for s in scenes),
                "failed": len(failed),
                "chunks": sum(s["chunks"] for s in scenes),
                "new_chunks": sum(s["new_chunks"] for s in scenes),
                "duration_ms": sum(s["duration_ms"] for s in scenes),
                "elapsed_ms": round((time.monotonic() - run.started) * 1000),
            },
        }

    def scene_summary(self, narration: batch.Narration) -> dict[str, Any]:
        subject = narration.subject
        story = getattr(subject, "story", None)
        error = None
        if narration.error_code or narration.status not in ("completed", ""):
            error = {
                "code": narration.error_code or narration.status,
                "message": narration.error_message or f"Narration is {narration.status}.",
            }
        return {
            "scene": subject.pk,
            "title": getattr(subject, "title", str(subject)),
            "story": getattr(story, "slug", None),
            "voice": narration.voice_id or None,
            "session": str(narration.session_id) if narration.session_id else None,
            "plan": narration.plan,
            "status": narration.status,
            "total_chunks": narration.total_chunks,
            **batch.narration_stats(narration),
            "duration_ms": narration.audio_ms,
            "error": error,
            "file": None,
        }

    def write_files(self, narrations: list[batch.Narration], scenes: list[dict]) -> None:
        out: Path = self.options["out"]
        by_story: dict[Any, list[tuple[batch.Narration, dict]]] = {}
        for narration, summary in zip(narrations, scenes, strict=True):
            if not narration.ok:
                continue
            path = out / scene_filename(narration.subject)
            batch.wav_write(path, [narration.session_id])
            summary["file"] = str(path)
            story = getattr(narration.subject, "story", None)
            by_story.setdefault(story, []).append((narration, summary))
        if not self.options["join"]:
            return
        for story in {getattr(n.subject, "story", None) for n in narrations} - {None}:
            self.stories.append(self.join_story(story, narrations, by_story.get(story, [])))

    def join_story(self, story: Any, narrations: list[batch.Narration], done: list) -> dict:
        wanted = [n for n in narrations if getattr(n.subject, "story", None) == story]
        entry = {"story": story.slug, "file": None, "samples": 0, "error": None}
        if len(done) != len(wanted):
            entry["error"] = {
                "code": "incomplete",
                "message": f"{len(wanted) - len(done)} scene(s) did not complete.",
            }
            return entry
        path = self.options["out"] / f"{story.slug}.wav"
        try:
            entry["samples"] = batch.wav_write(path, [n.session_id for n, _ in done])
        except InvalidInput as exc:
            entry["error"] = {"code": exc.code, "message": exc.message}
            return entry
        entry["file"] = str(path)
        return entry

    def report(self, summary: dict[str, Any]) -> None:
        if self.options["json"]:
            self.stdout.write(json.dumps(summary, indent=2))
            return
        if self.options["verbosity"] < 1:
            return
        for scene in summary["scenes"]:
            self.stdout.write(self.scene_line(scene))
        for story in summary["stories"]:
            if story["file"]:
                self.stdout.write(f"  story {story['story']}: {story['file']}")
        totals = summary["totals"]
        self.stdout.write(
            f"{totals['completed']}/{totals['scenes']} narrated ({totals['skipped']} already "
            f"done, {totals['resumed']} resumed, {totals['failed']} failed); "
            f"{totals['new_chunks']} new chunks, {totals['duration_ms'] / 1000:.1f} s of audio "
            f"in {totals['elapsed_ms'] / 1000:.1f} s"
        )

    def scene_line(self, scene: dict[str, Any]) -> str:
        prefix = f"{scene['story']} / " if scene["story"] else ""
        name = f"{prefix}{scene['title']} [{scene['scene']}]"
        if scene["error"]:
            label = "STOPPED" if scene["error"]["code"] == "interrupted" else "FAILED"
            return self.style.ERROR(
                f"  {label} {name}: {scene['error']['code']}: {scene['error']['message']}"
            )
        how = {"complete": "already narrated", "resume": "resumed"}.get(scene["plan"], "narrated")
        line = (
            f"  ok {name}: {how}, {scene['chunks']} chunks "
            f"({scene['cached_chunks']} cached), {scene['duration_ms'] / 1000:.1f} s"
        )
        return line + (f" -> {scene['file']}" if scene["file"] else "")

    def failure_text(self, summary: dict[str, Any]) -> str:
        failed = [s for s in summary["scenes"] if s["error"]]
        lines = [f"{len(failed)} of {len(summary['scenes'])} narrations failed:"]
        lines += [
            f"  scene {s['scene']} ({s['title']}): {s['error']['code']}: {s['error']['message']}"
            for s in failed
        ]
        lines += [
            f"  story {s['story']}: {s['error']['message']}"
            for s in summary["stories"]
            if s["error"]
        ]
        return "\n".join(lines)


def scene_filename(subject: Any) -> Path:
    """<story-slug>/<NN>-<title-slug>.wav, NN being the scene's place in its story."""
    story = getattr(subject, "story", None)
    title = slugify(getattr(subject, "title", "")) or str(subject.pk)
    if story is None:
        return Path(f"{subject._meta.model_name}-{subject.pk}-{title}.wav")
    order = list(type(subject).objects.filter(story=story).values_list("pk", flat=True))
    return Path(story.slug) / f"{order.index(subject.pk) + 1:02d}-{title[:60]}.wav"


@contextmanager
def _logs_to_stderr():
    """Keep stdout for the command's own output (the JSON summary above all): log records
    that the settings send to stdout go to stderr while the command runs."""
    moved = [
        h
        for h in logging.getLogger().handlers
        if isinstance(h, logging.StreamHandler) and h.stream is sys.stdout
    ]
    for handler in moved:
        handler.setStream(sys.stderr)
    try:
        yield
    finally:
        for handler in moved:
            handler.setStream(sys.stdout)


@contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (a supervisor, `kill`) stops as cleanly as Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
