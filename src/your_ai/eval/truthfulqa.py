"""TruthfulQA MC1 from its public CSV: the questions, and the result of scoring them.

For each question the Best Answer and every Incorrect Answer are scored by summed log-likelihood
after ``"Q: <question>\\nA:"``; a question is right when the Best Answer scores highest.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

TRUTHFULQA_SCORING = "logprob_sum"  # what picks the TruthfulQA MC1 answer
TRUTHFULQA_COLUMNS = ("Type", "Category", "Question", "Best Answer", "Correct Answers", "Incorrect Answers", "Source")
TRUTHFULQA_REQUIRED = ("Question", "Best Answer", "Incorrect Answers")
ANSWER_SEPARATOR = "; "


class TruthfulQAError(Exception):
    """A TruthfulQA CSV that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class TruthfulQAQuestion:
    line: int
    question: str
    best_answer: str
    incorrect_answers: tuple[str, ...]
    category: str = ""

    @property
    def choices(self) -> tuple[str, ...]:
        return (self.best_answer, *self.incorrect_answers)


@dataclass
class TruthfulQAResult:
    path: str
    questions: list[dict]  # per question: line, question, choices, logprobs, ..., correct

    @property
    def correct(self) -> int:
        return sum(1 for q in self.questions if q["correct"])

    @property
    def accuracy(self) -> float:
        return self.correct / len(self.questions) if self.questions else 0.0

    @property
    def accuracy_norm(self) -> float:
        return sum(1 for q in self.questions if q["correct_norm"]) / len(self.questions) if self.questions else 0.0

    def to_dict(self) -> dict:
        return {"path": self.path, "task": "mc1", "scored_by": TRUTHFULQA_SCORING, "questions": len(self.questions),
                "correct": self.correct, "accuracy": self.accuracy, "accuracy_norm": self.accuracy_norm,
                "results": self.questions}


def truthfulqa_context(question: str) -> str:
    return f"Q: {question}\nA:"


def split_answers(value: str) -> list[str]:
    """Answers of a TruthfulQA cell, separated by ``"; "``; blanks and repeats dropped."""
    answers: list[str] = []
    for answer in value.split(ANSWER_SEPARATOR):
        answer = answer.strip()
        if answer and answer not in answers:
            answers.append(answer)
    return answers


def read_truthfulqa(path: str | os.PathLike) -> list[TruthfulQAQuestion]:
    """Questions of a TruthfulQA CSV (columns Type, Category, Question, Best Answer, Correct
    Answers, Incorrect Answers, Source); ``TruthfulQAError`` naming file and line otherwise."""
    source = Path(path).expanduser()
    questions: list[TruthfulQAQuestion] = []
    try:
        with open(source, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle, strict=True)
            try:
                header = [cell.strip() for cell in next(reader)]
            except StopIteration:
                raise TruthfulQAError(f"{source}: empty file (expected a header line: "
                                      f"{', '.join(TRUTHFULQA_COLUMNS)})") from None
            missing = [name for name in TRUTHFULQA_REQUIRED if name not in header]
            if missing:
                raise TruthfulQAError(f"{source}:1: missing column(s) {', '.join(map(repr, missing))} "
                                      f"(found {', '.join(map(repr, header))})")
            end_of_previous = reader.line_num
            for row in reader:
                line, end_of_previous = end_of_previous + 1, reader.line_num
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) != len(header):
                    raise TruthfulQAError(f"{source}:{line}: expected {len(header)} fields, found {len(row)}")
                values = dict(zip(header, row))
                question = values["Question"].strip()
                best = values["Best Answer"].strip()
                if not question:
                    raise TruthfulQAError(f"{source}:{line}: empty 'Question'")
                if not best:
                    raise TruthfulQAError(f"{source}:{line}: empty 'Best Answer' for question {question!r}")
                incorrect = split_answers(values["Incorrect Answers"])
                if not incorrect:
                    raise TruthfulQAError(f"{source}:{line}: no 'Incorrect Answers' for question {question!r}")
                if best in incorrect:
                    raise TruthfulQAError(f"{source}:{line}: the Best Answer {best!r} is also an Incorrect Answer")
                questions.append(TruthfulQAQuestion(line, question, best, tuple(incorrect),
                                                    values.get("Category", "").strip()))
    except FileNotFoundError:
        raise TruthfulQAError(f"{source}: no such file") from None
    except IsADirectoryError:
        raise TruthfulQAError(f"{source}: is a directory, not a CSV file") from None
    except UnicodeDecodeError as error:
        raise TruthfulQAError(f"{source}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except csv.Error as error:
        raise TruthfulQAError(f"{source}:{reader.line_num}: malformed CSV ({error})") from None
    if not questions:
        raise TruthfulQAError(f"{source}: no questions")
    return questions
