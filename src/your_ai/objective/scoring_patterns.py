"""The scorer's regular expressions, each with the literal strings one of which any match must contain.

Most documents name few of the scorer's markers, so most of its patterns cannot match. Running
each one over the whole text is what scoring costs; a substring test (``needle in text``) is far
cheaper. Every pattern is therefore compiled together with its *needles*: a set of lower-case
ASCII strings, read from the pattern's own parse tree, such that any match of the pattern
contains at least one of them. A pattern runs only when one of its needles is in the document's
``folded`` text; the result is the same as running it always. A pattern with no such literal
(or one the parser cannot read) has no needles and always runs.

``folded`` lowers the text after mapping the four non-ASCII letters that a case-insensitive
pattern's ASCII letters also match (Python's ``re`` documents them: U+0130, U+0131, U+017F,
U+212A) to those letters, so a needle found in a case-insensitive or a case-sensitive match is
always found in the folded text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

try:  # Python 3.11+
    from re import _parser as _sre_parse
except ImportError:  # Python 3.10
    import sre_parse as _sre_parse  # type: ignore[no-redef]

# The non-ASCII letters that an ASCII letter matches under re.IGNORECASE, and that letter.
_ASCII_CASE_FOLDS = str.maketrans({"\u0130": "i", "\u0131": "i", "\u017f": "s", "\u212a": "k"})


def folded(text: str) -> str:
    """The text the needles are looked for in (see the module docstring)."""
    return text.translate(_ASCII_CASE_FOLDS).lower()


@dataclass(frozen=True)
class Pattern:
    """A compiled pattern and its needles (``None``: no literal every match contains)."""

    regex: re.Pattern
    needles: tuple[str, ...] | None

    def may_match(self, folded_text: str) -> bool:
        if self.needles is None:
            return True
        for needle in self.needles:
            if needle in folded_text:
                return True
        return False

    def search(self, text: str, folded_text: str) -> bool:
        return self.may_match(folded_text) and self.regex.search(text) is not None

    def findall(self, text: str, folded_text: str) -> list:
        return self.regex.findall(text) if self.may_match(folded_text) else []


def compile_pattern(pattern: str, flags: int = re.IGNORECASE) -> Pattern:
    return Pattern(re.compile(pattern, flags), needles(pattern, flags))


def compile_patterns(patterns: Mapping[str, str], flags: int = re.IGNORECASE) -> dict[str, Pattern]:
    return {name: compile_pattern(pattern, flags) for name, pattern in patterns.items()}


def needles(pattern: str, flags: int = 0) -> tuple[str, ...] | None:
    """Lower-case ASCII strings one of which every match of ``pattern`` contains, or ``None``."""
    try:
        found = _sequence_needles(list(_sre_parse.parse(pattern, flags)))
    except Exception:  # noqa: BLE001 - an unreadable parse tree only costs speed: the pattern always runs
        return None
    if not found:
        return None
    # A needle that contains another one adds nothing: drop it.
    return tuple(sorted(n for n in found if not any(other != n and other in n for other in found)))


def _sequence_needles(items: list) -> frozenset[str] | None:
    """The best needle set of a sequence: its longest run of literals, or that of one of its
    parts that must match (a group, an alternation whose every branch has needles, a repeat of
    at least one)."""
    best: frozenset[str] | None = None
    run: list[str] = []
    for op, value in items + [(None, None)]:
        if op is _sre_parse.LITERAL and value < 128:
            run.append(chr(value).lower())
            continue
        if run:
            best = _better(best, frozenset(["".join(run)]))
            run = []
        best = _better(best, _part_needles(op, value))
    return best


def _part_needles(op, value) -> frozenset[str] | None:
    if op is _sre_parse.SUBPATTERN:
        return _sequence_needles(list(value[-1]))
    if op is _sre_parse.BRANCH:
        branches = [_sequence_needles(list(branch)) for branch in value[1]]
        if all(branches):
            return frozenset().union(*branches)
        return None
    if op in (_sre_parse.MAX_REPEAT, _sre_parse.MIN_REPEAT) and value[0] >= 1:
        return _sequence_needles(list(value[2]))
    return None


def _better(current: frozenset[str] | None, candidate: frozenset[str] | None) -> frozenset[str] | None:
    """The set whose shortest needle is the longer (the rarer to be found by chance)."""
    if not candidate or min(map(len, candidate)) == 0:
        return current
    if current is None or min(map(len, candidate)) > min(map(len, current)):
        return candidate
    return current
