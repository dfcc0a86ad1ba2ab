"""The cut of a text into segments, alone: what a session pays before its first chunk.

    python bench/cut.py [--repeats 15] [--json out.json] [--beside-engine]

A session's first chunk goes out once its whole text is cut (its frame carries the count
of chunks). Blocks of plain sentences and dialogue in English, Spanish, French (and
Italian, Dutch, Polish), and German prose, take the plain path; the rest goes to pysbd,
about 5 ms per 1,000 characters (tts/segmentation.py, docs/benchmarks.md, P47, P60, P67,
P68). Each figure is the median of ``--repeats`` cuts, pysbd's kept blocks cleared before
each (a text cut for the first time), after one cut that warms pysbd up.

``--beside-engine``: what a long cut costs a Python engine that runs beside it (a long
text's cut runs while its next segments are made, P74): the tiny model's two segments,
on a thread of their own as on a worker's engine thread, alone and beside the cut of
19,000 characters that go to pysbd, with the GIL handed over as Python does by default
(every 5 ms at most) and every 1 ms (tried in round 24, not applied: docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.texts import TextSource, sentences  # noqa: E402

SPEAKERS = ["she said", "he asked", "said the keeper", "Mara said", "he whispered"]


def dialogue(chars: int, source: TextSource) -> str:
    """A scene of talk: quotations with attributions, a paragraph each, as fiction has them."""
    paragraphs: list[str] = []
    while sum(len(p) + 2 for p in paragraphs) < chars:
        n = len(paragraphs)
        first, second = source.sentence(), source.sentence(long=n % 2 == 1)
        speaker = SPEAKERS[n % len(SPEAKERS)]
        shapes = [
            f'"{first[:-1]}," {speaker}. "{second}"',
            f'"{first}" {speaker.capitalize()}. {second}',
            f'{second} "{first[:-1]}?" {speaker}.',
            f'"{first} {second}"',
        ]
        paragraphs.append(shapes[n % len(shapes)])
    return "\n\n".join(paragraphs)


# A scene of talk as Spanish and French fiction write it: a line after a dash, its
# attribution after another; French sets ? and ! apart with a no-break space, and
# quotes in «guillemets».
_TALK = {
    "es": (
        [
            "—¿Vendrá la tormenta esta noche? —preguntó {name} desde la puerta.",
            "—No lo sé —dijo {name}—. El viento cambió al anochecer.",
            "—¡Cierra las ventanas! —gritó {name}.",
            "—Ya están cerradas —respondió {name}—. Ángel subió hace una hora.",
            "—¿Y la lámpara del faro? —preguntó {name}. Nadie contestó.",
        ],
        ["Élise", "Tomás", "la señora Ruiz", "el guardián", "su hermano", "Óscar", "Lucía"],
    ),
    "fr": (
        [
            "—Viendra-t-elle cette nuit\u00a0? demanda {name} depuis la porte.",
            "—Je ne sais pas, dit {name}. Le vent a tourné au crépuscule.",
            "—Ferme les fenêtres\u00a0! cria {name}.",
            "—Elles sont déjà fermées, répondit {name}. Ève est montée il y a une heure.",
            "—Et la lampe du phare\u00a0? demanda {name}. Personne ne répondit.",
        ],
        ["Élise", "Thomas", "madame Roux", "le gardien", "son frère", "Océane", "Lucie"],
    ),
}


def talk(chars: int, language: str, *, guillemets: bool = False) -> str:
    """Paragraphs of talk, each different (pysbd's cut of a paragraph is kept)."""
    lines, names = _TALK[language]
    paragraphs: list[str] = []
    while sum(len(p) + 2 for p in paragraphs) < chars:
        n = len(paragraphs)
        line = lines[n % len(lines)].format(name=names[(n // len(lines) + n) % len(names)])
        line += " " + source_sentence(language, n)
        if guillemets:
            line = "« " + line.removeprefix("—").replace("\u00a0? ", "\u00a0? » ", 1)
            line = line.replace("\u00a0! ", "\u00a0! » ", 1).replace(", dit", " », dit")
            line = line.replace(", répondit", " », répondit")
        paragraphs.append(line)
    return "\n\n".join(paragraphs)


def prose(chars: int, language: str) -> str:
    """Paragraphs of narration, each different."""
    sentences = [source_sentence(language, n) for n in range(729)]
    paragraphs, n = [], 0
    while sum(len(p) + 2 for p in paragraphs) < chars:
        paragraphs.append(" ".join(sentences[n : n + 4]))
        n += 4
    return "\n\n".join(paragraphs)


_WORDS = {
    "es": ["faro", "barco", "puerto", "mar", "viento", "camino", "pueblo", "muelle", "cielo"],
    "fr": ["phare", "bateau", "port", "mer", "vent", "chemin", "village", "quai", "ciel"],
    "de": ["Turm", "Hafen", "Wald", "Fluss", "Weg", "Berg", "Steg", "Markt", "Himmel"],
}


def source_sentence(language: str, n: int) -> str:
    """A sentence of narration, different for each n below 729."""
    words = _WORDS[language]
    a, b, c = (words[(n // 9**k) % 9] for k in range(3))
    if language == "es":
        return f"Miró el {a}, después el {b} y por fin el {c}."
    if language == "de":
        return f"Er sah den {a}, dann den {b} und zuletzt den {c}. Über allem lag Nebel."
    return f"Il regarda le {a}, puis le {b} et enfin le {c}."


def texts() -> dict[str, tuple[str, str]]:
    """name -> (language, text)."""
    source = TextSource(seed=11)
    titled = " ".join(
        f"Mr. Gray saw that {s[0].lower()}{s[1:]}" for s in sentences(source.long(2_000))
    )
    spanish = " ".join(
        f"El guardián del faro número {n} subió la escalera al anochecer. ¿Vendría la tormenta?"
        for n in range(250)
    )
    initials = " ".join(  # from a source of its own: the texts above stay as they were
        f"J. R. Gray saw that {s[0].lower()}{s[1:]}"
        for s in sentences(TextSource(seed=12).long(2_000))
    )
    return {
        "plain, 2,000 chars": ("en", source.long(2_000)),
        "plain, 20,000 chars": ("en", source.long(20_000)),
        "dialogue, 2,500 chars": ("en", dialogue(2_500, source)),
        "dialogue, 20,000 chars": ("en", dialogue(20_000, source)),
        "titles, 2,000 chars": ("en", titled),
        "initials (pysbd), 2,000 chars": ("en", initials),
        "Spanish, 20,000 chars": ("es", spanish[:20_000]),
        "Spanish talk, 2,500 chars": ("es", talk(2_500, "es")),
        "Spanish talk, 20,000 chars": ("es", talk(20_000, "es")),
        "French talk, 2,500 chars": ("fr", talk(2_500, "fr")),
        "French talk, 20,000 chars": ("fr", talk(20_000, "fr")),
        "French talk in « », 2,500 chars": ("fr", talk(2_500, "fr", guillemets=True)),
        "French talk in « », 20,000 chars": ("fr", talk(20_000, "fr", guillemets=True)),
        "German prose, 2,500 chars": ("de", prose(2_500, "de")),
        "German prose, 20,000 chars": ("de", prose(20_000, "de")),
    }


def beside_engine(repeats: int) -> list[dict]:
    """The tiny model's two segments alone, beside the cut, and beside it with the GIL
    handed over every 1 ms."""
    import tempfile
    import threading

    from bench.engines import coqui_voice
    from tts import segmentation, synthesis
    from tts.engines import get_engine

    source = TextSource(seed=13)
    texts = [source.named(19_000) for _ in range(repeats)]
    with tempfile.TemporaryDirectory() as tmp:
        voice = coqui_voice("coqui-tiny", Path(tmp) / "tiny", full_size=False)
        engine = get_engine(voice.engine)
        engine.load(voice)
        cutting = {"language": voice.language, **synthesis.voice_cutting(voice)}
        heads = [segmentation.segment_text(t[:400], **cutting)[1:3] for t in texts]
        for segment in heads[0]:
            engine.synthesize(segment.speech_text, voice)
        segmentation.segment_text(texts[0], **cutting)

        def run(text: str, head: list, switch_s: float | None) -> tuple[float, float]:
            made: list[float] = []

            def make() -> None:
                started = time.perf_counter()
                for segment in head:
                    engine.synthesize(segment.speech_text, voice)
                made.append((time.perf_counter() - started) * 1000)

            thread = threading.Thread(target=make)
            segmentation._pysbd_ends.cache_clear()
            default_s = sys.getswitchinterval()
            thread.start()
            started = time.perf_counter()
            if switch_s is not None:
                sys.setswitchinterval(switch_s)
                try:
                    segmentation.segment_text(text, **cutting)
                finally:
                    sys.setswitchinterval(default_s)
            cut_ms = (time.perf_counter() - started) * 1000 if switch_s is not None else 0.0
            thread.join()
            return made[0], cut_ms

        cuts = [
            (None, "alone"),
            (sys.getswitchinterval(), "beside the cut"),
            (0.001, "beside the cut, GIL handed over every 1 ms"),
        ]
        times: dict[str, list[tuple[float, float]]] = {label: [] for _, label in cuts}
        for text, head in zip(texts, heads, strict=True):
            for switch_s, label in cuts:  # interleaved: the host's drift falls on all three
                times[label].append(run(text, head, switch_s))
    return [
        {
            "tiny model, segments 1 and 2": label,
            "chars": sum(len(s.speech_text) for s in heads[0]),
            "synthesis ms p50": round(statistics.median(m for m, _ in times[label]), 1),
            "cut ms p50": (
                round(statistics.median(c for _, c in times[label]), 1) if switch_s else "-"
            ),
        }
        for switch_s, label in cuts
    ]


def table(rows: list[dict]) -> None:
    widths = {key: max(len(key), *(len(str(row[key])) for row in rows)) for key in rows[0]}
    print("  ".join(key.ljust(width) for key, width in widths.items()))
    for row in rows:
        print("  ".join(str(row[key]).ljust(width) for key, width in widths.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--beside-engine", action="store_true", help="also a long cut beside the tiny model"
    )
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    if args.beside_engine:  # one torch thread, as each of the stack's two workers has
        os.environ.setdefault("TTS_TORCH_THREADS", "1")
    import django

    django.setup()
    from tts import segmentation

    rows = []
    for name, (language, text) in texts().items():
        segmentation.warm_up(language)
        times, plain_blocks, blocks = [], 0, 0
        for _ in range(args.repeats):
            segmentation._pysbd_ends.cache_clear()
            started = time.perf_counter()
            segments = segmentation.segment_text(text, language=language)
            times.append((time.perf_counter() - started) * 1000)
        for start, end, _ in segmentation._blocks(segmentation._Source(text)):
            blocks += 1
            plain_blocks += segmentation._plain_sentence_ends(text[start:end], language) is not None
        rows.append(
            {
                "text": name,
                "chars": len(text),
                "segments": len(segments),
                "blocks without pysbd": f"{plain_blocks}/{blocks}",
                "cut ms p50": round(statistics.median(times), 2),
                "cut ms max": round(max(times), 2),
            }
        )
    table(rows)
    beside = beside_engine(args.repeats) if args.beside_engine else []
    if beside:
        print()
        table(beside)
    if args.json:
        machine = {"python": platform.python_version(), "cpus": os.cpu_count()}
        out = {"machine": machine, "cut": rows, "beside_engine": beside}
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
