"""Texts for the benchmark: unique sentences (so the audio cache never helps unless a
scenario means it to) and the ~2,000-character reference text of bench/engines.py."""

from __future__ import annotations

import random
import re

from bench.engines import TEXT as REFERENCE_TEXT

__all__ = ["REFERENCE_TEXT", "TextSource", "sentences"]

_SUBJECTS = [
    "the harbour master",
    "an old fisherman",
    "the youngest sister",
    "a tired ferryman",
    "the village baker",
    "a quiet stranger",
    "the lighthouse keeper",
    "her brother",
    "the schoolteacher",
    "a grey cat",
    "the night watchman",
    "the postman",
    "a small boy",
    "the innkeeper",
    "the ship's cook",
    "a travelling painter",
]
_VERBS = [
    "carried",
    "mended",
    "painted",
    "counted",
    "watched",
    "forgot",
    "noticed",
    "found",
    "followed",
    "sold",
    "borrowed",
    "polished",
    "packed",
    "opened",
    "folded",
    "remembered",
]
_OBJECTS = [
    "a wooden box",
    "the brass lantern",
    "three letters",
    "an empty basket",
    "the blue rope",
    "a heavy coat",
    "the broken clock",
    "a jar of honey",
    "the old map",
    "a pair of boots",
    "the silver key",
    "a loaf of bread",
    "the torn sail",
    "a bundle of firewood",
    "the green bottle",
    "a folded newspaper",
]
_PLACES = [
    "down to the harbour",
    "along the cliff path",
    "across the market square",
    "behind the chapel",
    "into the boathouse",
    "past the customs office",
    "up the hill",
    "through the narrow lane",
    "towards the station",
    "over the stone bridge",
    "beside the mill",
    "around the headland",
]
_TIMES = [
    "before dawn",
    "after the storm",
    "on a windy afternoon",
    "just before supper",
    "late on Sunday",
    "in the grey morning",
    "while the bells rang",
    "as the tide turned",
]
_TAILS = [
    "and nobody said a word",
    "while the gulls circled overhead",
    "because the ferry was late again",
    "though the rain had not stopped",
    "and then sat down to rest",
    "as if nothing had happened",
]


class TextSource:
    """Sentences that never repeat within one run (seeded, so runs are alike)."""

    def __init__(self, seed: int = 8) -> None:
        self.random = random.Random(seed)
        self.seen: set[str] = set()

    def sentence(self, *, long: bool = False) -> str:
        for _ in range(10_000):
            r = self.random
            words = [r.choice(_SUBJECTS), r.choice(_VERBS), r.choice(_OBJECTS), r.choice(_PLACES)]
            if long or r.random() < 0.5:
                words.append(r.choice(_TIMES))
            if long:
                words.append(r.choice(_TAILS))
            text = " ".join(words)
            text = text[0].upper() + text[1:] + "."
            if text not in self.seen:
                self.seen.add(text)
                return text
        raise RuntimeError("ran out of unique sentences")

    def short(self) -> str:
        """Two sentences, about 100 characters: two chunks (the first is capped at 60)."""
        return f"{self.sentence()} {self.sentence()}"

    def medium(self, sentences: int = 5) -> str:
        return " ".join(self.sentence(long=i % 2 == 1) for i in range(sentences))

    def long(self, chars: int = len(REFERENCE_TEXT)) -> str:
        """Fresh prose of about ``chars`` characters, shaped like the reference text."""
        parts: list[str] = []
        while sum(len(p) + 1 for p in parts) < chars:
            parts.append(self.sentence(long=len(parts) % 3 == 2))
        return " ".join(parts)

    def named(self, chars: int = 20_000) -> str:
        """Fresh prose of about ``chars`` characters in paragraphs of six sentences, two of
        them naming someone by initials ("J. R. Gray nodded."): every paragraph goes to
        pysbd to be cut (tts.segmentation), about 3.5 ms per 1,000 characters."""
        paragraphs: list[str] = []
        while sum(len(p) + 2 for p in paragraphs) < chars:
            n = len(paragraphs)
            name = f"{_INITIALS[n % len(_INITIALS)]} {_SURNAMES[n % len(_SURNAMES)]}"
            body = [self.sentence(long=i % 3 == 2) for i in range(6)]
            body[1] = f"{name} saw that {body[1][0].lower()}{body[1][1:]}"
            body[4] = f"{name} nodded. {body[4]}"
            paragraphs.append(" ".join(body))
        return "\n\n".join(paragraphs)


_INITIALS = ["J. R.", "A. M.", "T. S.", "E. B."]
_SURNAMES = ["Gray", "Holt", "Marsh", "Quill", "Vane"]


def sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]
