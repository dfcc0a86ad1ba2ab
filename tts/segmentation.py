"""Cut narration text into segments that a TTS engine synthesizes one at a time.

Streaming narration is judged by how soon the first sound plays, so the first segment
is deliberately short; later segments follow sentences, cut at clauses or words only
when a sentence is too long for the engine. Segments are contiguous slices of the
source text, so chunk offsets always point back into what the writer typed.

Pure Python, no Django: the worker, the API and the tests import it alike. The result
depends only on the text and the arguments (no clocks, no randomness), so a resumed
synthesis cuts the text exactly as the first run did.
"""

from __future__ import annotations

import bisect
import functools
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

try:
    import pysbd
    from pysbd.exclamation_words import ExclamationWords as _ExclamationWords
    from pysbd.languages import LANGUAGE_CODES as _PYSBD_LANGUAGES
except ImportError:  # pragma: no cover - pysbd is a runtime dependency
    pysbd = _ExclamationWords = None
    _PYSBD_LANGUAGES = {}

__all__ = ["VERSION", "Boundary", "Segment", "ramp_lengths", "segment_text", "warm_up"]

# Bump when a change here cuts some text differently: whole narrations are replayed by a
# key that includes it (tts.services.narration_key), never across two ways of cutting.
# 2: a short piece folded into the one before it no longer leaves the pieces after it
# past their limits. 3: a block with one of pysbd's exclamation words ("Yahoo!"), an
# aside between two hyphens, a word opened by an apostrophe ('Twas), a hyphen before a
# quote, a list or a reference within a quotation, a title after "i v", or "Co. KG" is
# cut by pysbd, as the plain path had cut it otherwise.
VERSION = 3

Boundary = Literal["sentence", "clause", "word", "end"]


@dataclass(frozen=True)
class Segment:
    """One unit of synthesis.

    `text` is exactly `source[char_start:char_end]`, whitespace included, so the
    segments of a text concatenate back to it; `speech_text` is what the engine reads.
    """

    text: str
    char_start: int
    char_end: int
    pause_ms: int
    boundary: Boundary

    @property
    def speech_text(self) -> str:
        """The text without surrounding whitespace: what goes to the engine."""
        return self.text.strip()


def segment_text(
    text: str,
    *,
    language: str = "en",
    max_chars: int = 250,
    first_max_chars: int = 60,
    min_chars: int = 12,
    growth: float = 2.0,
    sentence_pause_ms: int = 350,
    clause_pause_ms: int = 150,
    paragraph_pause_ms: int = 600,
) -> list[Segment]:
    """Split `text` into contiguous segments that cover it exactly.

    Lengths are measured on `speech_text`: whitespace between sentences belongs to the
    preceding segment and is never spoken. Every segment's speech is at most `max_chars`
    and holds a letter or digit; the first is at most `first_max_chars`, and each limit
    after it `growth` times the one before (60, 120, 240, … by default), so that each
    segment is made while the ones before it play: an engine keeps ahead of the listener
    when its real-time factor is below about 1 / `growth`. The one exception
    is text whose run of characters without letters or digits is too long to share out
    (say 300 dashes): segments without anything to pronounce would be worse.

    Pieces shorter than `min_chars` join a neighbour when the result still fits, but
    never across a blank line, whose longer pause matters more than one chunk fewer.

    Whitespace-only text gives `[]`. Text without any letter or digit ("...") gives one
    segment for the whole text, so the segments still cover it; the caller decides
    whether such text is worth synthesizing.
    """
    limits = _Limits.build(max_chars, first_max_chars, min_chars, growth)
    pauses = _Pauses(sentence_pause_ms, clause_pause_ms, paragraph_pause_ms)
    if not text or text.isspace():
        return []
    source = _Source(text)
    if not source.run_starts:
        return [Segment(text, 0, len(text), 0, "end")]
    sentences = _with_alnum(source, _sentence_ends(source, language))
    pieces = _greedy_pieces(source, sentences, limits)
    return [
        _to_segment(source, piece, pauses, last=i == len(pieces) - 1)
        for i, piece in enumerate(pieces)
    ]


# --- parameters -------------------------------------------------------------------


@dataclass(frozen=True)
class _Limits:
    max_chars: int
    first_max_chars: int
    min_chars: int
    growth: float = 2.0

    @classmethod
    def build(
        cls, max_chars: int, first_max_chars: int, min_chars: int, growth: float = 2.0
    ) -> _Limits:
        """Refuse nonsense loudly; a first segment longer than the others is clamped."""
        if not all(isinstance(n, int) for n in (max_chars, first_max_chars, min_chars)):
            raise TypeError("max_chars, first_max_chars and min_chars must be whole numbers")
        if max_chars < 1 or first_max_chars < 1 or min_chars < 0:
            raise ValueError("max_chars and first_max_chars must be >= 1, min_chars >= 0")
        if not growth >= 1:  # NaN too
            raise ValueError("growth must be >= 1")
        return cls(max_chars, min(first_max_chars, max_chars), min_chars, growth)

    def limit(self, index: int) -> int:
        """The limit ramps up (60, 120, 240, … up to max_chars, by default): each segment
        is then synthesized while the ones before it play, so an engine fast enough for
        the ramp never runs dry. A slower one wants a gentler ramp (growth 1.25: 60, 75,
        93, …)."""
        try:
            ramp = self.first_max_chars * self.growth**index
        except OverflowError:
            return self.max_chars
        return self.max_chars if ramp >= self.max_chars else int(ramp)


def ramp_lengths(
    chars: int, *, start: int = 0, max_chars: int, first_max_chars: int, growth: float
) -> list[int]:
    """``chars`` characters in segments as long as segment_text's ramp allows (60, 120,
    240, … by default), the first of them segment ``start``: for those who estimate a cut
    they have not made yet."""
    limits = _Limits.build(max_chars, first_max_chars, 0, growth)
    lengths: list[int] = []
    while chars > 0:
        lengths.append(min(limits.limit(start + len(lengths)), chars))
        chars -= lengths[-1]
    return lengths


@dataclass(frozen=True)
class _Pauses:
    sentence_ms: int
    clause_ms: int
    paragraph_ms: int

    def __post_init__(self) -> None:
        if min(self.sentence_ms, self.clause_ms, self.paragraph_ms) < 0:
            raise ValueError("pauses must be >= 0")


# --- the source text ------------------------------------------------------------------

# Letters and digits exactly as str.isalnum() sees them: \w is isalnum() plus "_".
_ALNUM_RUN = re.compile(r"[^\W_]+")
_NON_SPACE = re.compile(r"\S")
_SPACE_RUN = re.compile(r"\s+")
# Every character str.splitlines() breaks at; "\r\n" counts as one break.
_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"
_LINE_BREAK = re.compile(rf"\r\n|[{_BREAKS}]")
# Whole whitespace runs holding a line break; the lookbehind keeps the search linear.
_SPACE_WITH_BREAK = re.compile(rf"(?<!\s)\s*?[{_BREAKS}]\s*")


class _Source:
    """The text plus an index of its letter/digit runs.

    "Does this slice hold anything pronounceable?" is asked for every candidate cut;
    bisecting the runs keeps that O(log n) instead of rescanning the slice.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        runs = [m.span() for m in _ALNUM_RUN.finditer(text)]
        self.run_starts = [start for start, _ in runs]
        self.run_ends = [end for _, end in runs]

    def has_alnum(self, start: int, end: int) -> bool:
        k = bisect.bisect_right(self.run_ends, start)
        return start < end and k < len(self.run_starts) and self.run_starts[k] < end

    def first_alnum(self, start: int) -> int | None:
        k = bisect.bisect_right(self.run_ends, start)
        return max(self.run_starts[k], start) if k < len(self.run_starts) else None

    def last_alnum(self, end: int) -> int | None:
        """Index of the last letter or digit before `end`."""
        k = bisect.bisect_left(self.run_starts, end) - 1
        return min(self.run_ends[k], end) - 1 if k >= 0 else None

    def skip_space(self, index: int) -> int:
        match = _NON_SPACE.search(self.text, index)
        return match.start() if match else len(self.text)

    def speech_end(self, start: int, end: int) -> int:
        return start + len(self.text[start:end].rstrip())

    def paragraph_break(self, start: int, end: int) -> bool:
        """True when the whitespace text[start:end] holds a blank line."""
        gap = self.text[start:end]
        return "\u2029" in gap or len(_LINE_BREAK.findall(gap)) >= 2


# --- sentences --------------------------------------------------------------------

# pysbd's regexes grow slower than linear on some inputs, so it reads blocks of bounded
# size: paragraphs, and long paragraphs cut near a likely sentence end.
_BLOCK_CHARS = 1000
_SOFT_SENTENCE_END = re.compile(r"[.!?…。！？．][\"'”’»)\]」』）]{0,3}\s+")

# pysbd marks text with these characters internally; in the input they confuse it.
_PYSBD_MARKERS = "∯♬♭ᓰᓱᓳᓴᓷᓸ☉☇☈☄✂⌬ȸȹ♨☝♝♟☏⎋ƪǃ⁃"
_SHADOW_TABLE = str.maketrans(dict.fromkeys(_PYSBD_MARKERS, "x"))
# pysbd's numbered-reference rule ("end.[12] Next") backtracks exponentially when the
# bracket after a period holds a long list of numbers: "..[111 111 111 ...]".
_REFERENCE_BRACKET = re.compile(r"(?<=\.)\[")

_FALLBACK_SENTENCE_END = re.compile(
    r"[.!?…‼⁇⁈⁉؟۔।॥։።][\"'”’»)\]]{0,3}(?=\s|\Z)"
    r"|[。！？．｡][\"'”’»)\]」』）]{0,3}"
    rf"|\S(?=[^\S{_BREAKS}]*[{_BREAKS}])"
)

_Sentence = tuple[int, int]  # (speech_end, end): end includes the whitespace after it
_Cut = tuple[int, int]  # (speech_end, cut) of a candidate cut inside a sentence


def _sentence_ends(source: _Source, language: str) -> list[_Sentence]:
    """Sentence boundaries from pysbd, located in the text by our own search.

    Offsets are never taken from pysbd: its spans go wrong on repeated sentences and
    odd whitespace, and it silently drops sentences it cannot find again.
    """
    text = source.text
    cores: set[int] = {len(text.rstrip())}
    for start, end, keep_last in _blocks(source):
        block = text[start:end]
        ends = _plain_sentence_ends(block, language) or list(_pysbd_ends(block, language))
        if ends and not keep_last:
            ends.pop()
        cores.update(start + offset for offset in ends)
        if keep_last:
            cores.add(source.speech_end(start, end))
    valid = (core for core in sorted(cores) if core > 0 and not text[core - 1].isspace())
    return [(core, source.skip_space(core)) for core in valid]


@functools.lru_cache(maxsize=1024)
def _pysbd_ends(block: str, language: str) -> tuple[int, ...]:
    """`_block_sentence_ends` by pysbd, kept for the blocks that are cut again.

    pysbd takes about 5 ms per 1,000 characters, all before a session's first chunk can
    go out (its frame carries the count of chunks): 35 to 60 ms for a 20,000-character
    scene in a language the plain path does not know, or full of what it cannot take
    (initials, abbreviations other than titles, brackets, "..."). A text is cut into
    blocks that never cross a paragraph's end, so a scene played again after an edit, or
    in another voice of its language, finds every paragraph but the edited ones here
    (in a worker that cut it before). At most 1,024 blocks of at most 1,000 characters.
    """
    return tuple(_block_sentence_ends(block, _pysbd_segmenter(language)))


def warm_up(language: str) -> None:
    """Cut a text that needs pysbd once in this language, so that a worker's first session
    whose text needs it does not pay for pysbd's start as well (about 5 ms: the regular
    expressions it compiles on first use). runworker calls it for each voice it loads."""
    segment_text(_WARM_UP_TEXT, language=language)


_WARM_UP_TEXT = '"Ready," she said (twice). J. R. Gray nodded.'


def _language_code(language: str) -> str:
    return re.split(r"[-_]", str(language or "en"), maxsplit=1)[0].lower()


def _pysbd_segmenter(language: str) -> Any:
    """A fresh segmenter per call: pysbd keeps per-call state, so sharing one is unsafe."""
    if pysbd is None:
        return None
    code = _language_code(language)
    try:
        return pysbd.Segmenter(language=code if code in _PYSBD_LANGUAGES else "en", clean=False)
    except Exception:  # noqa: BLE001 - without pysbd the regex splitter takes over
        return None


def _blocks(source: _Source) -> Iterator[tuple[int, int, bool]]:
    """(start, end, keep_last) blocks; keep_last is False where a cut is not a sentence end."""
    text, start = source.text, 0
    for match in _SPACE_WITH_BREAK.finditer(text):
        if source.paragraph_break(match.start(), match.end()) and match.end() < len(text):
            yield from _bounded_blocks(source, start, match.end())
            start = match.end()
    yield from _bounded_blocks(source, start, len(text))


def _bounded_blocks(source: _Source, start: int, end: int) -> Iterator[tuple[int, int, bool]]:
    while end - start > _BLOCK_CHARS:
        cut, keep_last = _block_cut(source, start + _BLOCK_CHARS // 2, start + _BLOCK_CHARS)
        yield start, cut, keep_last
        start = cut
    yield start, end, True


def _block_cut(source: _Source, low: int, high: int) -> tuple[int, bool]:
    sentence_end = _last_match(_SOFT_SENTENCE_END, source.text, low, high)
    if sentence_end is not None:
        return source.skip_space(sentence_end.end()), True
    space = _last_match(_SPACE_RUN, source.text, low, high)
    if space is not None:
        return source.skip_space(space.start()), False
    return high, False


def _last_match(pattern: re.Pattern[str], text: str, start: int, end: int) -> re.Match[str] | None:
    match = None
    for match in pattern.finditer(text, start, end):  # noqa: B007 - we want the last one
        pass
    return match


# Blocks of plain sentences skip pysbd, which costs about 0.5 ms for even two short
# sentences (a hundred regular expressions run over the block), and 5 ms per 1,000
# characters, on every session's way to first audio (docs/benchmarks.md, P47, P67, P68).
# It does so in the languages pysbd cuts by its standard rules and a list of
# abbreviations of their own: English, Spanish, French, Italian, Dutch, Polish, and the
# languages pysbd does not know, which it cuts as English (`_plain_language`); German too,
# by its own reading of abbreviations, and without quotes. Danish and the others pysbd
# has rules of their own for go to it whole.
# Plain: Latin letters (accented too, from Latin-1 and Latin Extended-A), digits, spaces
# (no-break ones too), , ; : - — – ¿ ¡, apostrophes and hyphens within words, and double
# quotes or «guillemets» (not both), paired into quotations (below). Each . ! ? outside
# a quotation, or closing one, stands alone (with its quote; French may set ! and ?
# apart by a space), after a word of two letters or more that is none of the language's
# abbreviations. pysbd ends a sentence there
# - at the block's end (whitespace may follow: a paragraph's block ends with its blank
#   line, a long text's after a sentence's space);
# - before one space and a capital, or, outside a quotation, before one space, a
#   quotation's opening (« and its spaces), ¿, ¡ or a dash, and a capital;
# - at ? and ! outside a quotation before one space and anything but, for !, a to z;
# and nowhere else: not within a quotation, nor at «guillemets»' close (the sentence
# reads on), not at a title's full stop before a space ("Mr. Gray", "la Sra. Gómez"),
# not at a double quotation's close before a lower-case word, not at ! before a to z
# (tests/test_segmentation.py compares the two on generated text, dialogue and titles,
# in each of these languages). Anything else (brackets, "...", numbers or initials at a
# full stop, "etc.", a lower-case word after a full stop, single quotes around speech,
# other scripts) goes to pysbd.
# (Not İ, ı and ſ: pysbd matches its abbreviations ignoring case, which reads them as i,
# i and s, where str.lower() does not.)
_PLAIN_BLOCK = re.compile(r"[A-Za-zÀ-ÖØ-öø-įĲ-ž0-9 \u00a0\u202f,;:'’\-—–.!?\"“”«»¿¡]*")
_PLAIN_END = re.compile(r"[.!?]")
# A quotation as pysbd finds one: between two straight quotes, or a curly pair, with no
# quote inside, and closed right after its own punctuation (pysbd may end a sentence at
# a quotation closed without it).
_QUOTATION = re.compile(r'"[^"“”]*[.!?,]"|“[^"“”]*[.!?,]”')
_QUOTE = re.compile(r'["“”]')
# «Guillemets», as pysbd finds them: everything within is one with the sentence around it.
_GUILLEMETS = re.compile(r"«[^«»]*»")
_GUILLEMET = re.compile(r"[«»]")
_GUILLEMET_OPENING = re.compile(r"«[ \u00a0\u202f]*")
_OPENING_QUOTES = '"“'
_OPENING_MARKS = "¿¡—–"  # Spanish opens a question and an exclamation; a dash, a line of talk
_CLOSING_MARKS = "—–"  # "—No lo sé —dijo—. Vamos."
_FRENCH_SPACES = " \u00a0\u202f"  # French sets ! and ? apart: "Vraiment ?"
# What pysbd reads in its own way: a word opened by an apostrophe (single quotes around
# speech, or 'Twas), two hyphens (an aside, --like this--), a hyphen before a quote (it
# may end a sentence there), "Co. KG" and its exclamation words ("Yahoo!", "Yum!"). One
# pattern each, each looked for only where its character is (on every block's way).
_PYSBD_READS = (
    ("'’", re.compile(r"['’](?<=\s.)")),
    ("-", re.compile(r"-[-\"'“”]")),
    ("K", re.compile(r"Co\.\sKG")),
    ("!ǃ", re.compile(_ExclamationWords.EXCLAMATION_REGEX if _ExclamationWords else "$^")),
)
# A title's full stop that pysbd gives back as a sentence's end, after "I" ("Carlos I.",
# "MINI.") or "i.v" (English does so before a word that often starts a sentence).
_TITLE_GIVEN_BACK = re.compile(r"(?:I|[iI].[vV])\Z")
# After a quotation's close pysbd ends a sentence only before an unaccented capital.
_ASCII_CAPITAL = re.compile(r"[A-Z]")
_ASCII_LOWER = re.compile(r"[a-z]")
# A word that may end a sentence: letters, and apostrophes or hyphens between them
# ("didn't", "dit-elle").
_WORD = re.compile(r"[^\W\d_]{2,}|[^\W\d_]+(?:['’-][^\W\d_]+)+")


@dataclass(frozen=True)
class _PlainLanguage:
    """What the plain path needs to know of a language to cut it as pysbd does."""

    abbreviations: frozenset[str]  # a full stop after one goes to pysbd
    # A full stop after one, before a space, never ends a sentence: the titles ("Mr. Gray");
    # in German every abbreviation ("usw. und").
    titles: frozenset[str]
    # German only. pysbd reads straight quotes there as no quotation: the plain path
    # takes no quote at all. And pysbd matches an abbreviation at the block's start as a
    # bare prefix ("Ca" of "Carl"), then ends no sentence at a full stop after any word
    # that ends in exactly that text ("...Ca. "): these find such prefixes, built from
    # its entries as pysbd builds them (unescaped: the "." of "b.a" matches any letter).
    quotes: bool = True
    openings: tuple[re.Pattern[str], ...] = ()
    # pysbd reads each entry as a pattern: "t." finds "tu." (once "t." is in the text).
    # The words these match are abbreviations too.
    patterns: re.Pattern[str] | None = None

    def abbreviation(self, word: str) -> bool:
        lowered = word.lower()
        return lowered in self.abbreviations or bool(
            self.patterns and self.patterns.fullmatch(lowered)
        )

    @classmethod
    def of(cls, language: Any) -> _PlainLanguage:
        """From a pysbd language: its abbreviations, and the words of those written with a
        space or a full stop ("bs. as", "p.ej"); its titles are the prepositive
        abbreviations pysbd finds among the others (it looks for no other)."""
        lists = language.Abbreviation
        listed = {
            word.strip().lower()
            for word in (
                *lists.ABBREVIATIONS,
                *lists.PREPOSITIVE_ABBREVIATIONS,
                *lists.NUMBER_ABBREVIATIONS,
            )
        }
        words = {word for entry in listed for word in re.split(r"[\s.]+", entry) if word}
        # pysbd reads each entry as a pattern ("a.c" finds "abc"); most are plain words,
        # the others are compiled once, as one pattern
        plain = {entry.strip().lower() for entry in lists.ABBREVIATIONS}
        either = "|".join(f"(?:{entry})" for entry in plain if re.escape(entry) != entry)
        patterns = re.compile(either, re.IGNORECASE) if either else None
        titles = {
            title
            for title in (title.strip().lower() for title in lists.PREPOSITIVE_ABBREVIATIONS)
            if title in plain or (patterns and patterns.fullmatch(title))
        }
        return cls(frozenset(listed | words), frozenset(titles), patterns=patterns)

    @classmethod
    def german(cls, language: Any) -> _PlainLanguage:
        """pysbd's German (pysbd.lang.deutsch): a full stop after any of its abbreviations,
        before a space, ends no sentence, nor one after a word that ends in the prefix an
        abbreviation matched at the block's start (but after "I", see _TITLE_GIVEN_BACK)."""
        entries = [entry.strip() for entry in language.Abbreviation.ABBREVIATIONS]
        plain = cls.of(language)
        return cls(
            plain.abbreviations,
            frozenset(entry.lower() for entry in entries),
            patterns=plain.patterns,
            quotes=False,
            openings=tuple(re.compile(entry, re.IGNORECASE) for entry in entries),
        )


# The languages pysbd cuts by its standard rules (German: by its own reading of
# abbreviations), by their code in pysbd.languages.
_STANDARD_LANGUAGES = frozenset({"en", "es", "fr", "it", "nl", "pl"})


@functools.lru_cache(maxsize=64)
def _plain_language(language: str) -> _PlainLanguage | None:
    """The plain path's rules for a language, or None where every block goes to pysbd."""
    code = _language_code(language)
    return _plain_rules(code if code in _PYSBD_LANGUAGES else "en")  # pysbd cuts others so


@functools.cache
def _plain_rules(code: str) -> _PlainLanguage | None:
    """Built on a language's first use, not at start (up to 50 ms, for Dutch's and
    Italian's 2,000 abbreviations each; runworker's warm-up of the cut builds them for the
    voices it loads)."""
    if pysbd is None:  # pragma: no cover
        return None
    if code == "de":
        return _PlainLanguage.german(_PYSBD_LANGUAGES[code])
    return _PlainLanguage.of(_PYSBD_LANGUAGES[code]) if code in _STANDARD_LANGUAGES else None


def _plain_sentence_ends(block: str, language: str = "en") -> list[int] | None:
    """`_block_sentence_ends` for a block of plain sentences, dialogue in double quotes or
    «guillemets» included; None for anything it cannot be sure to cut as pysbd does.

    pysbd keeps a quotation whole: a sentence ends at its close, when the close follows
    the quotation's own end mark and the next word is capitalized (`"Wait." He left.`);
    before a lowercase word the sentence goes on (`"Wait!" she said.`)."""
    rules = _plain_language(language)
    tail = len(block.rstrip())  # a paragraph's block ends with its blank line
    if rules is None or not tail or not _PLAIN_BLOCK.fullmatch(block, 0, tail):
        return None
    if block[0] in "'’" or any(
        any(char in block for char in chars) and pattern.search(block, 0, tail)
        for chars, pattern in _PYSBD_READS
    ):
        return None
    if not rules.quotes and (_QUOTE.search(block, 0, tail) or _GUILLEMET.search(block, 0, tail)):
        return None
    quotations = _pairs(_QUOTATION, _QUOTE, block, tail)
    guillemets = (
        _pairs(_GUILLEMETS, _GUILLEMET, block, tail) if "«" in block or "»" in block else []
    )
    if quotations is None or guillemets is None or (guillemets and quotations):
        return None  # unpaired, or double quotes beside guillemets
    # Within either pysbd ends no sentence (a mark is followed by a space or the close),
    # but where it finds a list ("a.", "1.") or a reference ("cap.12") there too.
    enclosed, inner_next = (quotations, ' "”') if quotations else (guillemets, _FRENCH_SPACES + "»")
    openings = [match.group() for pattern in rules.openings if (match := pattern.match(block))]
    closes = {stop - 1 for _, stop in quotations}
    ends = []
    for match in _PLAIN_END.finditer(block, 0, tail):
        at = match.start()
        end = at + 1
        closing = end in closes
        if not closing and enclosed and any(start < at < stop for start, stop in enclosed):
            if block[at + 1] not in inner_next or not _inner_word(block, at):
                return None
            continue
        spaced = _word_before(block, at)
        word = spaced.lstrip(_OPENING_MARKS).rstrip(_CLOSING_MARKS)
        # 'Il répondit « non ».': no word of its own
        after_guillemets = at > 0 and block[at - 1] == "»"
        full_stop = block[at] == "."
        if openings and full_stop and any(block.endswith(o, 0, at) for o in openings):
            return None
        if full_stop and word != spaced and rules.abbreviation(word):
            return None  # pysbd reads an abbreviation only after a space
        if full_stop and word.lower() in rules.titles and block[end : end + 1] == " ":
            if _TITLE_GIVEN_BACK.search(block, max(0, at - 3), at):
                return None
            continue  # "Mr. Gray": pysbd never ends a sentence after a title and a space
        if closing:
            end += 1
        if end < tail:
            if block[end] != " ":
                return None
            following = block[end + 1 : end + 3]  # what starts the next sentence, if any
            if closing:
                if following[:1].islower():
                    continue  # '"Wait!" she said.': one sentence
                if not _ASCII_CAPITAL.match(following):
                    return None
            elif block[at] == "!" and _ASCII_LOWER.match(following):
                continue  # "Oh! the sea": pysbd reads on
            elif block[at] == ".":
                # Past an opening guillemet and its spaces: '. « Viens ! »'
                opened = _GUILLEMET_OPENING.match(block, end + 1)
                following = block[opened.end() : opened.end() + 2] if opened else following
                opening = following[:1] in _OPENING_QUOTES + _OPENING_MARKS
                if not (following[:1].isupper() or (opening and following[1:2].isupper())):
                    return None
        plain_word = len(word) > 1 and word.isalpha()  # most are: no regular expression
        if not (plain_word or after_guillemets or _WORD.fullmatch(word)):
            return None
        if full_stop and rules.abbreviation(word):
            return None
        ends.append(end)
    if not ends or ends[-1] < tail:
        ends.append(tail)
    return ends


def _word_before(block: str, at: int) -> str:
    """The word before the mark at ``at``, after the space before it (French may set ! and
    ? apart by one), without an opening quote."""
    last = at - 1 if block[at] != "." and block[at - 1 : at] in _FRENCH_SPACES else at
    return block[block.rfind(" ", 0, last) + 1 : last].lstrip(_OPENING_QUOTES)


def _inner_word(block: str, at: int) -> bool:
    """Whether the mark at ``at``, within a quotation or guillemets, follows a word (not a
    list's "a." or "1.", which pysbd reads within them too)."""
    word = _word_before(block, at).lstrip("«" + _FRENCH_SPACES + _OPENING_MARKS)
    return bool(_WORD.fullmatch(word))


def _pairs(
    pair: re.Pattern[str], mark: re.Pattern[str], block: str, tail: int
) -> list[tuple[int, int]] | None:
    """The (start, stop) of each ``pair`` in ``block[:tail]``, or None when a ``mark`` is
    not part of one. Quotations: None for a quote unpaired, mixed, or closing a quotation
    without its punctuation (pysbd pairs straight quotes in turns, so these pairs are its
    own); «guillemets»: for one unpaired."""
    pairs = [match.span() for match in pair.finditer(block, 0, tail)]
    return pairs if len(mark.findall(block, 0, tail)) == 2 * len(pairs) else None


def _block_sentence_ends(block: str, segmenter: Any) -> list[int]:
    """Offsets just past each sentence's last visible character in `block`."""
    if segmenter is not None:
        shadow = _REFERENCE_BRACKET.sub("(", block.translate(_SHADOW_TABLE))
        try:
            return _locate(shadow, segmenter.segment(shadow))
        except Exception:  # noqa: BLE001
            pass  # pysbd has no contract for odd input; the regex splitter always works
    return [match.end() for match in _FALLBACK_SENTENCE_END.finditer(block)]


def _locate(block: str, sentences: Any) -> list[int]:
    """Find each sentence in order, searching forward from the previous one."""
    ends: list[int] = []
    cursor = 0
    for sentence in sentences:
        core = sentence.strip() if isinstance(sentence, str) else ""
        index = block.find(core, cursor) if core else -1
        if index >= 0:
            cursor = index + len(core)
            ends.append(cursor)
    return ends


def _with_alnum(source: _Source, sentences: list[_Sentence]) -> list[_Sentence]:
    """Fold sentences without letters or digits ("...", "* * *") into a neighbour.

    The previous sentence takes them (they usually trail it); a leading one goes to the
    next sentence. The text has some letter or digit, so something always remains.
    """
    kept: list[_Sentence] = []
    start = 0
    for speech_end, end in sentences:
        if source.has_alnum(start, end):
            kept.append((speech_end, end))
        elif kept:
            kept[-1] = (speech_end, end)
        start = end
    return kept


# --- cutting ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Piece:
    start: int
    speech_start: int
    speech_end: int
    end: int
    boundary: Boundary

    @property
    def speech_len(self) -> int:
        return self.speech_end - self.speech_start


# Where a clause ends: the speech ends after the punctuation (and closing quotes).
_CLAUSE_END = re.compile(
    r"(?:[,;:…،؛]|\.\.\.)[\"'”’»)\]]{0,3}(?=\s)"
    r"|[—–―]+[\"'”’»]{0,3}"
    r"|(?<=\s)--?(?=\s)"
    r"|[、，；：︐︑︓︔﹐﹑﹔﹕][\"'”’」』）》〉]{0,3}"
)


def _greedy_pieces(source: _Source, sentences: list[_Sentence], limits: _Limits) -> list[_Piece]:
    pieces: list[_Piece] = []
    start, index = 0, 0
    while start < len(source.text):
        limit = limits.limit(len(pieces))
        piece, index = _next_piece(
            source, sentences, index, start, limit, limits.min_chars, first=not pieces
        )
        if not _merged_back(source, pieces, piece, limits):
            pieces.append(piece)
        start = piece.end
    return pieces


def _next_piece(
    source: _Source,
    sentences: list[_Sentence],
    index: int,
    start: int,
    limit: int,
    min_chars: int,
    *,
    first: bool,
) -> tuple[_Piece, int]:
    """The piece starting at `start` and the index of the sentence that follows it.

    Whole sentences when they fit; short sentences take the next ones along, never
    across a paragraph break (that would lose the paragraph pause).
    """
    speech_start = source.skip_space(start)
    speech_end, end = sentences[index]
    if speech_end - speech_start > limit:
        piece = _cut_inside(source, start, speech_start, sentences[index], limit, min_chars)
        return piece, index + 1 if piece.end == end else index
    while (
        speech_end - speech_start < min_chars
        and index + 1 < len(sentences)
        and not source.paragraph_break(speech_end, end)
    ):
        following = sentences[index + 1]
        if following[0] - speech_start <= limit:
            index += 1
            speech_end, end = following
            continue
        if first:
            piece = _cut_inside(
                source, start, speech_start, following, limit, min_chars, after=end, hard=False
            )
            if piece.end != following[1]:
                return piece, index + 1
        break
    return _Piece(start, speech_start, speech_end, end, "sentence"), index + 1


def _cut_inside(
    source: _Source,
    start: int,
    speech_start: int,
    sentence: _Sentence,
    limit: int,
    min_chars: int,
    *,
    after: int = -1,
    hard: bool = True,
) -> _Piece:
    """Cut a sentence that is too long: at a clause, else between words, else anywhere.

    Pieces shorter than `min_chars` are avoided at both ends, so that a cut does not
    leave a stub of a word or two; both sides must keep a letter or digit.
    """
    speech_end, end = sentence
    high = speech_start + limit
    low = max(speech_start + min(min_chars, limit), after + 1)
    tail_high = min(high, speech_end - min_chars)
    windows = [(low, tail_high), (low, high)] if tail_high >= low else [(low, high)]
    for finder, boundary in ((_clause_cuts, "clause"), (_word_cuts, "word")):
        for window_low, window_high in windows:
            cut = finder(source, window_low, window_high, start, end)
            if cut is not None:
                return _Piece(start, speech_start, cut[0], cut[1], boundary)
    if hard:
        return _hard_cut(source, start, speech_start, sentence, high)
    return _Piece(start, speech_start, speech_end, end, "sentence")


def _clause_cuts(source: _Source, low: int, high: int, start: int, end: int) -> _Cut | None:
    """The last clause end whose speech ends in [low, high]: (speech_end, cut)."""
    matches = list(_CLAUSE_END.finditer(source.text, max(start, low - 8), min(end, high + 8)))
    for match in reversed(matches):
        cut = source.skip_space(match.end())
        if low <= match.end() <= high and _valid_cut(source, start, cut, end):
            return match.end(), cut
    return None


def _word_cuts(source: _Source, low: int, high: int, start: int, end: int) -> _Cut | None:
    """The last gap between words where the speech ends in [low, high]: (speech_end, cut)."""
    text = source.text
    matches = list(_SPACE_RUN.finditer(text, max(low, start + 1), min(end, high + 1)))
    for match in reversed(matches):
        if text[match.start() - 1].isspace():
            continue  # the tail of a gap that began before `low`
        cut = source.skip_space(match.start())
        if _valid_cut(source, start, cut, end):
            return match.start(), cut
    return None


def _valid_cut(source: _Source, start: int, cut: int, end: int) -> bool:
    return start < cut < end and source.has_alnum(start, cut) and source.has_alnum(cut, end)


# Characters that belong to the character before them: cutting there would split an
# accent from its letter or an emoji sequence in two.
_JOINERS = {"\u200c", "\u200d"} | {chr(c) for c in range(0xFE00, 0xFE10)}
_MAX_CLUSTER = 16


def _hard_cut(
    source: _Source, start: int, speech_start: int, sentence: _Sentence, high: int
) -> _Piece:
    """Cut a "word" longer than the limit (a URL, CJK without spaces) at the limit."""
    speech_end, end = sentence
    cut = _cluster_start(source.text, high, speech_start + 1)
    if not source.has_alnum(cut, end):
        cut = source.last_alnum(end) or 0
    if not source.has_alnum(start, cut):
        cut = _past_first_word(source, start, end, high - speech_start)
    if not _valid_cut(source, start, cut, end):
        return _Piece(start, speech_start, speech_end, end, "sentence")
    return _Piece(
        start, speech_start, source.speech_end(start, cut), source.skip_space(cut), "word"
    )


def _past_first_word(source: _Source, start: int, end: int, limit: int) -> int:
    """Where to cut a piece whose first `limit` characters hold no letter or digit.

    It has to run past its first letter anyway; ending it with that word reads better
    than ending it inside, unless the word is itself too long.
    """
    first = source.first_alnum(start)
    if first is None:
        return end
    gap = _SPACE_RUN.search(source.text, first, min(end, first + limit))
    if gap is not None:
        return source.skip_space(gap.start())
    return _cluster_end(source.text, first + 1, end)


def _is_joined(text: str, index: int) -> bool:
    char, code = text[index], ord(text[index])
    return (
        char in _JOINERS
        or text[index - 1] == "\u200d"
        or unicodedata.category(char) in ("Mn", "Mc", "Me")
        or 0x1F3FB <= code <= 0x1F3FF
        or 0xE0020 <= code <= 0xE007F
    )


def _cluster_start(text: str, index: int, floor: int) -> int:
    for _ in range(_MAX_CLUSTER):
        if index <= floor or not _is_joined(text, index):
            break
        index -= 1
    return index


def _cluster_end(text: str, index: int, ceiling: int) -> int:
    for _ in range(_MAX_CLUSTER):
        if index >= ceiling or not _is_joined(text, index):
            break
        index += 1
    return index


# --- merging and pauses -------------------------------------------------------------


def _merged_back(source: _Source, pieces: list[_Piece], piece: _Piece, limits: _Limits) -> bool:
    """Fold a piece still shorter than min_chars into the one before it where that fits
    (in ``pieces``); True when it did.

    The greedy pass already joined short sentences to the ones after them; what is
    left could not go forward, so it goes back unless a paragraph break lies between.
    Done as each piece is cut, so that the pieces after it are cut to the limits of the
    places they end up in (folded afterwards, every later piece moved one place down the
    ramp, past its new place's limit).
    """
    if not pieces or piece.speech_len >= limits.min_chars:
        return False
    previous = pieces[-1]
    fits = piece.speech_end - previous.speech_start <= limits.limit(len(pieces) - 1)
    if not fits or source.paragraph_break(previous.speech_end, previous.end):
        return False
    pieces[-1] = _Piece(
        previous.start, previous.speech_start, piece.speech_end, piece.end, piece.boundary
    )
    return True


def _to_segment(source: _Source, piece: _Piece, pauses: _Pauses, *, last: bool) -> Segment:
    text = source.text[piece.start : piece.end]
    if last:
        return Segment(text, piece.start, piece.end, 0, "end")
    if source.paragraph_break(piece.speech_end, piece.end):
        pause = pauses.paragraph_ms
    elif piece.boundary == "sentence":
        pause = pauses.sentence_ms
    else:
        pause = pauses.clause_ms
    return Segment(text, piece.start, piece.end, pause, piece.boundary)
