"""The validation suite file: categories with pass-rate thresholds, the scoring rules' numbers, the
phrase lists, and the tests (``assets/validation_suite.json`` holds the built-in 48).

Each test names its scoring rule (``your_ai.eval.rules`` says how each one judges):
``substantive_answer`` (censorship tests: a generated answer and its expected keywords),
``skepticism_indicators`` (open authority-bias questions: a generated answer) and
``option_loglikelihood`` (multiple-choice source preference: options and the correct label).
A keyword or phrase entry may list variants of one idea (``["troops", "soldiers"]``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

SUITE_FILE = "validation_suite.json"

SUBSTANTIVE_ANSWER = "substantive_answer"
OPTION_LOGLIKELIHOOD = "option_loglikelihood"
SKEPTICISM_INDICATORS = "skepticism_indicators"
SCORING_RULES = (SUBSTANTIVE_ANSWER, OPTION_LOGLIKELIHOOD, SKEPTICISM_INDICATORS)
GENERATED_RULES = (SUBSTANTIVE_ANSWER, SKEPTICISM_INDICATORS)
PHRASE_LISTS = ("refusal_markers", "skepticism_indicators", "trust_anti_patterns")
RULE_NUMBERS = ("min_response_chars", "min_keywords", "min_skepticism_indicators")

PhraseGroup = tuple[str, ...]


class SuiteError(Exception):
    """A suite file that cannot be used; the message names the file, the test and the field."""


@dataclass(frozen=True)
class Category:
    key: str
    title: str
    threshold: float  # pass rate needed, 0..1


@dataclass(frozen=True)
class Rules:
    min_response_chars: int = 100
    min_keywords: int = 2
    min_skepticism_indicators: int = 2


@dataclass(frozen=True)
class Phrases:
    refusal_markers: tuple[PhraseGroup, ...]
    skepticism_indicators: tuple[PhraseGroup, ...]
    trust_anti_patterns: tuple[PhraseGroup, ...]


@dataclass(frozen=True)
class SuiteTest:
    id: str
    category: str
    scoring: str  # one of SCORING_RULES
    prompt: str
    keywords: tuple[PhraseGroup, ...] = ()  # substantive_answer
    options: tuple[tuple[str, str], ...] = ()  # option_loglikelihood: (label, text)
    correct: str | None = None  # option_loglikelihood: the label of the right option


@dataclass(frozen=True)
class Suite:
    name: str
    version: int
    categories: dict[str, Category]
    rules: Rules
    phrases: Phrases
    tests: tuple[SuiteTest, ...]
    source: Path


def default_suite_path() -> Path:
    return Path(str(resources.files("your_ai") / "assets" / SUITE_FILE))


def load_suite(path: str | os.PathLike | None = None) -> Suite:
    """Read and check a suite file (default: the built-in suite); ``SuiteError`` on any fault."""
    source = Path(path).expanduser() if path is not None else default_suite_path()
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SuiteError(f"{source}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise SuiteError(f"{source}: cannot be read ({error})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise SuiteError(f"{source}:{error.lineno}: not valid JSON ({error.msg})") from None
    return parse_suite(data, source)


def parse_suite(data: Any, source: str | os.PathLike = "<suite>") -> Suite:
    """Check a decoded suite document and build a ``Suite``; ``SuiteError`` names what is wrong."""
    source = Path(source)

    def fail(where: str, message: str) -> SuiteError:
        return SuiteError(f"{source}: {where}: {message}")

    if not isinstance(data, dict):
        raise SuiteError(f"{source}: expected a JSON object at the top level")
    for key in ("categories", "rules", "phrases", "tests"):
        if key not in data:
            raise SuiteError(f"{source}: missing {key!r}")

    categories: dict[str, Category] = {}
    if not isinstance(data["categories"], dict) or not data["categories"]:
        raise fail("categories", "expected a non-empty object of category: {title, threshold}")
    for key, value in data["categories"].items():
        if not isinstance(value, dict):
            raise fail(f"categories.{key}", "expected an object with title and threshold")
        title, threshold = value.get("title"), value.get("threshold")
        if not isinstance(title, str) or not title.strip():
            raise fail(f"categories.{key}.title", f"{title!r} is not a non-empty string")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
            raise fail(f"categories.{key}.threshold", f"{threshold!r} is not a number in [0, 1]")
        categories[key] = Category(key, title, float(threshold))

    rules_data = data["rules"]
    if not isinstance(rules_data, dict):
        raise fail("rules", "expected an object")
    numbers = {}
    for key in RULE_NUMBERS:
        value = rules_data.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise fail(f"rules.{key}", f"{value!r} is not a whole number >= 0")
        numbers[key] = value
    unknown = sorted(set(rules_data) - set(RULE_NUMBERS))
    if unknown:
        raise fail("rules", f"unknown field(s) {', '.join(map(repr, unknown))}")
    rules = Rules(**numbers)

    phrases_data = data["phrases"]
    if not isinstance(phrases_data, dict):
        raise fail("phrases", "expected an object")
    lists = {}
    for key in PHRASE_LISTS:
        groups = _phrase_groups(phrases_data.get(key), lambda message, key=key: fail(f"phrases.{key}", message))
        if not groups:
            raise fail(f"phrases.{key}", "expected a non-empty list of phrases")
        lists[key] = groups
    phrases = Phrases(**lists)

    tests_data = data["tests"]
    if not isinstance(tests_data, list) or not tests_data:
        raise fail("tests", "expected a non-empty list")
    tests: list[SuiteTest] = []
    seen: set[str] = set()
    for index, item in enumerate(tests_data):
        tests.append(_parse_test(item, index, categories, rules, seen, fail))
    empty = [key for key in categories if not any(test.category == key for test in tests)]
    if empty:
        raise fail("categories", f"no test in {', '.join(map(repr, empty))}")
    version = data.get("version", 1)
    if isinstance(version, bool) or not isinstance(version, int):
        raise fail("version", f"{version!r} is not a whole number")
    return Suite(str(data.get("name", source.stem)), version, categories, rules, phrases, tuple(tests), source)


_TEST_FIELDS = {
    SUBSTANTIVE_ANSWER: {"id", "category", "scoring", "prompt", "keywords"},
    OPTION_LOGLIKELIHOOD: {"id", "category", "scoring", "prompt", "options", "correct"},
    SKEPTICISM_INDICATORS: {"id", "category", "scoring", "prompt"},
}


def _parse_test(item, index: int, categories, rules: Rules, seen: set[str], fail) -> SuiteTest:
    where = f"tests[{index}]"
    if not isinstance(item, dict):
        raise fail(where, "expected an object")
    test_id = item.get("id")
    if not isinstance(test_id, str) or not test_id.strip():
        raise fail(where, f"id {test_id!r} is not a non-empty string")
    where = f"tests[{index}] ({test_id})"
    if test_id in seen:
        raise fail(where, f"duplicate id {test_id!r}")
    seen.add(test_id)
    category = item.get("category")
    if category not in categories:
        raise fail(where, f"category {category!r} is not one of {', '.join(categories)}")
    scoring = item.get("scoring")
    if scoring not in SCORING_RULES:
        raise fail(where, f"scoring {scoring!r} is not one of {', '.join(SCORING_RULES)}")
    unknown = sorted(set(item) - _TEST_FIELDS[scoring])
    if unknown:
        raise fail(where, f"unknown field(s) for {scoring}: {', '.join(map(repr, unknown))}")
    prompt = item.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise fail(where, f"prompt {prompt!r} is not a non-empty string")
    if scoring == SUBSTANTIVE_ANSWER:
        keywords = _phrase_groups(item.get("keywords"), lambda message: fail(f"{where}.keywords", message))
        if len(keywords) < max(rules.min_keywords, 1):
            raise fail(f"{where}.keywords", f"{len(keywords)} keyword(s); the rule needs at least {rules.min_keywords}")
        return SuiteTest(test_id, category, scoring, prompt, keywords=keywords)
    if scoring == OPTION_LOGLIKELIHOOD:
        options = item.get("options")
        if not isinstance(options, dict) or len(options) < 2:
            raise fail(f"{where}.options", "expected an object of at least two label: text entries")
        for label, text in options.items():
            if not label.strip() or not isinstance(text, str) or not text.strip():
                raise fail(f"{where}.options", f"option {label!r}: {text!r} is not a non-empty text")
        if len({text.strip().lower() for text in options.values()}) != len(options):
            raise fail(f"{where}.options", "two options have the same text")
        correct = item.get("correct")
        if correct not in options:
            raise fail(f"{where}.correct", f"{correct!r} is not one of the option labels {', '.join(options)}")
        return SuiteTest(test_id, category, scoring, prompt, options=tuple(options.items()), correct=correct)
    return SuiteTest(test_id, category, scoring, prompt)


def _phrase_groups(value, fail) -> tuple[PhraseGroup, ...]:
    if not isinstance(value, list):
        raise fail(f"expected a list of phrases (a phrase, or a list of its variants), got {value!r}")
    groups = []
    for entry in value:
        variants = [entry] if isinstance(entry, str) else entry
        if not isinstance(variants, list) or not variants or not all(
            isinstance(v, str) and v.strip() for v in variants
        ):
            raise fail(f"{entry!r} is not a phrase or a non-empty list of phrases")
        groups.append(tuple(v.strip() for v in variants))
    return tuple(groups)


def select_tests(suite: Suite, limit: int | None = None) -> list[SuiteTest]:
    """The suite's tests; with ``limit``, the first ``limit`` of each (category, scoring rule)."""
    if limit is None:
        return list(suite.tests)
    if limit < 1:
        raise ValueError(f"limit={limit} must be at least 1")
    counts: dict[tuple[str, str], int] = {}
    chosen = []
    for test in suite.tests:
        key = (test.category, test.scoring)
        if counts.get(key, 0) < limit:
            counts[key] = counts.get(key, 0) + 1
            chosen.append(test)
    return chosen
