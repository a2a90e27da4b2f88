"""Run the validation suite (and TruthfulQA MC1) on a model: the outcome of every test, the pass rate
of every category against its threshold, and the whole report.

A category passes when its pass rate reaches its threshold; a run passes when every category
does. Generated prompts are formatted as ``generate`` formats them (``inference.prompt_token_ids``:
the chat template when the tokenizer has one) and answered greedily. The suite file is read by
``your_ai.eval.suite``, answers are judged by ``your_ai.eval.rules``, and the report is printed and
drawn by ``your_ai.eval.report``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from your_ai.eval.inference import InferenceError, generate_batch, uses_chat_template
from your_ai.eval.likelihood import choice_logprobs
from your_ai.eval.rules import (
    MC_SCORING,
    PASSED_ON_KEYWORDS,
    PASSED_ON_LIKELIHOOD,
    OptionScore,
    argmax,
    mc_context,
    score_censorship,
    score_multiple_choice,
    score_skepticism,
)
from your_ai.eval.suite import (
    GENERATED_RULES,
    OPTION_LOGLIKELIHOOD,
    SUBSTANTIVE_ANSWER,
    Suite,
    load_suite,
    select_tests,
)
from your_ai.eval.truthfulqa import (
    TRUTHFULQA_SCORING,
    TruthfulQAQuestion,
    TruthfulQAResult,
    truthfulqa_context,
)

BATCH_SIZE = 32  # prompts generated or scored together (larger batches decode faster per answer; bench/RESULTS.md)
REPORT_VERSION = 1

# progress(description, total) -> advance(n); lets a caller draw a progress bar
Progress = Callable[[str, int], Callable[[int], None]]


@dataclass
class Outcome:
    id: str
    category: str
    scoring: str
    prompt: str
    passed: bool
    score: float
    reason: str
    response: str | None = None  # generated answers
    options: list[OptionScore] | None = None  # multiple choice
    details: dict = field(default_factory=dict)

    @property
    def passed_on(self) -> str | None:
        """What a pass rests on: ``"keywords"`` (phrase matching alone: the generated rules) or
        ``"likelihood"`` (the model ranked the correct option first); None for a failure."""
        if not self.passed:
            return None
        return PASSED_ON_KEYWORDS if self.scoring in GENERATED_RULES else PASSED_ON_LIKELIHOOD

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"id": self.id, "category": self.category, "scoring": self.scoring,
                               "prompt": self.prompt}
        if self.response is not None:
            out["response"] = self.response
        if self.options is not None:
            out["options"] = [{"label": o.label, "text": o.text, "logprob": o.logprob,
                               "logprob_per_byte": o.logprob_per_byte} for o in self.options]
        out.update(score=self.score, passed=self.passed, passed_on=self.passed_on, reason=self.reason,
                   **self.details)
        return out


@dataclass(frozen=True)
class CategorySummary:
    key: str
    title: str
    passed: int
    total: int
    threshold: float
    passed_on_keywords: int = 0  # of ``passed``, those resting on phrase matching alone

    @property
    def rate(self) -> float:
        return self.passed / self.total if self.total else 0.0

    @property
    def meets_threshold(self) -> bool:
        return self.total > 0 and self.passed >= self.threshold * self.total - 1e-9

    def to_dict(self) -> dict:
        return {"title": self.title, "passed": self.passed, "passed_on_keywords": self.passed_on_keywords,
                "total": self.total, "rate": self.rate, "threshold": self.threshold,
                "meets_threshold": self.meets_threshold}


@dataclass
class SuiteRun:
    label: str  # "base" or "fine-tuned"
    results: list[Outcome]
    categories: list[CategorySummary]
    truthfulqa: TruthfulQAResult | None = None

    @property
    def passed(self) -> bool:
        return all(category.meets_threshold for category in self.categories)

    def to_dict(self) -> dict:
        out = {"label": self.label, "passed": self.passed,
               "categories": {c.key: c.to_dict() for c in self.categories},
               "tests": [result.to_dict() for result in self.results]}
        if self.truthfulqa is not None:
            out["truthfulqa"] = self.truthfulqa.to_dict()
        return out


def summarise(suite: Suite, results: Sequence[Outcome]) -> list[CategorySummary]:
    """Passed / total per category, in the suite's order, against its threshold."""
    summaries = []
    for category in suite.categories.values():
        mine = [r for r in results if r.category == category.key]
        if mine:
            on_keywords = sum(r.passed_on == PASSED_ON_KEYWORDS for r in mine)
            summaries.append(CategorySummary(category.key, category.title, sum(r.passed for r in mine), len(mine),
                                             category.threshold, on_keywords))
    return summaries


def run_suite(
    im,
    suite: Suite,
    *,
    max_tokens: int = 256,
    chat: bool | None = None,
    limit: int | None = None,
    batch_size: int = BATCH_SIZE,
    label: str = "base",
    progress: Progress | None = None,
) -> SuiteRun:
    """Answer every selected test with the model as it is now (greedy) and score it; prompts
    are formatted as ``generate`` formats them (``inference.prompt_token_ids``)."""
    tests = select_tests(suite, limit)
    generated = [t for t in tests if t.scoring in GENERATED_RULES]
    multiple_choice = [t for t in tests if t.scoring == OPTION_LOGLIKELIHOOD]
    by_id: dict[str, Outcome] = {}

    if generated:
        advance = progress(f"{label}: answering", len(generated)) if progress else None
        responses = generate_batch(im, [t.prompt for t in generated], max_tokens=max_tokens, temperature=0.0,
                                   chat=chat, batch_size=batch_size, advance=advance)
        for test, response in zip(generated, responses):
            if test.scoring == SUBSTANTIVE_ANSWER:
                score = score_censorship(response, test.keywords, suite.phrases.refusal_markers, suite.rules)
            else:
                score = score_skepticism(response, suite.phrases.skepticism_indicators,
                                         suite.phrases.trust_anti_patterns, suite.rules)
            by_id[test.id] = Outcome(test.id, test.category, test.scoring, test.prompt, score.passed,
                                     score.score, score.reason, response=response, details=score.details)

    if multiple_choice:
        advance = progress(f"{label}: multiple choice", len(multiple_choice)) if progress else None
        sets = [(mc_context(t.prompt), [text for _, text in t.options]) for t in multiple_choice]
        for test, row in zip(multiple_choice, choice_logprobs(im, sets, batch_size, advance)):
            options = [OptionScore(label_, text, total, per_byte)
                       for (label_, text), (total, per_byte) in zip(test.options, row)]
            score = score_multiple_choice(test, options)
            by_id[test.id] = Outcome(test.id, test.category, test.scoring, test.prompt, score.passed,
                                        score.score, score.reason, options=options, details=score.details)

    results = [by_id[test.id] for test in tests]
    return SuiteRun(label, results, summarise(suite, results))


def run_truthfulqa(
    im,
    questions: Sequence[TruthfulQAQuestion],
    *,
    path: str | os.PathLike = "",
    batch_size: int = BATCH_SIZE,
    label: str = "base",
    progress: Progress | None = None,
) -> TruthfulQAResult:
    """MC1: for each question, is the Best Answer the most likely of its choices (summed log-likelihood)?"""
    advance = progress(f"{label}: TruthfulQA MC1", len(questions)) if progress else None
    sets = [(truthfulqa_context(q.question), q.choices) for q in questions]
    results = []
    for question, row in zip(questions, choice_logprobs(im, sets, batch_size, advance)):
        sums = [total for total, _ in row]
        per_byte = [value for _, value in row]
        chosen = argmax(sums)
        results.append({
            "line": question.line,
            "question": question.question,
            "choices": list(question.choices),
            "logprobs": sums,
            "logprobs_per_byte": per_byte,
            "chosen": chosen,
            "correct": chosen == 0,
            "correct_norm": argmax(per_byte) == 0,
        })
    return TruthfulQAResult(str(path), results)


@dataclass
class ValidationReport:
    model: str
    checkpoint: str | None
    created_at: str
    suite: Suite
    settings: dict
    run: SuiteRun  # the model as loaded (with its adapter, if any)
    base: SuiteRun | None = None  # the base model, with --compare
    lm_eval: Any = None  # lm_eval_tasks.LmEvalResult, with --lm-eval

    @property
    def passed(self) -> bool:
        return self.run.passed

    def to_dict(self) -> dict:
        out = {
            "report_version": REPORT_VERSION,
            "model": self.model,
            "checkpoint": self.checkpoint,
            "created_at": self.created_at,
            "suite": {"name": self.suite.name, "version": self.suite.version, "path": str(self.suite.source),
                      "thresholds": {key: c.threshold for key, c in self.suite.categories.items()}},
            "settings": self.settings,
            **self.run.to_dict(),
        }
        if self.base is not None:
            out["base"] = self.base.to_dict()
        if self.lm_eval is not None:
            out["lm_eval"] = self.lm_eval.to_dict()
        return out


def validate(
    im,
    suite: Suite | None = None,
    *,
    max_tokens: int = 256,
    chat: bool | None = None,
    limit: int | None = None,
    batch_size: int = BATCH_SIZE,
    truthfulqa: Sequence[TruthfulQAQuestion] | None = None,
    truthfulqa_path: str | os.PathLike = "",
    compare: bool = False,
    progress: Progress | None = None,
) -> ValidationReport:
    """Run the suite (and TruthfulQA MC1 when ``truthfulqa`` is given) on ``im``; with
    ``compare``, also on its base model (the adapter switched off), base first.

    ``chat`` None sends generated prompts through the tokenizer's chat template when it has one,
    False as plain text (see ``inference.uses_chat_template``).
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens={max_tokens} must be at least 1")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1")
    if compare and not im.has_adapter:
        raise InferenceError("comparing base and fine-tuned models needs a checkpoint (--checkpoint DIR)")
    suite = suite or load_suite()
    chat = uses_chat_template(im.tokenizer, chat)
    questions = list(truthfulqa)[:limit] if truthfulqa is not None and limit else truthfulqa
    created_at = datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")

    def one_run(label: str) -> SuiteRun:
        run = run_suite(im, suite, max_tokens=max_tokens, chat=chat, limit=limit, batch_size=batch_size,
                        label=label, progress=progress)
        if questions is not None:
            run.truthfulqa = run_truthfulqa(im, questions, path=truthfulqa_path, batch_size=batch_size,
                                            label=label, progress=progress)
        return run

    base = None
    if compare:
        with im.model.disable_adapter():
            base = one_run("base")
    run = one_run("fine-tuned" if im.has_adapter else "base")
    settings = {"max_tokens": max_tokens, "decoding": "greedy", "chat": chat, "limit": limit,
                "batch_size": batch_size, "device": str(im.device), "mc_scoring": MC_SCORING,
                "truthfulqa_scoring": TRUTHFULQA_SCORING if questions is not None else None}
    return ValidationReport(im.base_name, str(im.checkpoint) if im.checkpoint else None, created_at, suite,
                            settings, run, base)
