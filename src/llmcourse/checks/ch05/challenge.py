"""challenge.ipynb: fine-tune the course's tiny GPT for review sentiment, as accurate on a
hidden test split as you can get within the time budget (an outcome-graded challenge).

The learner gets labelled training and validation reviews and the test reviews without
their labels; the truth is the test labels, which never enter the learner's kernel in
grading. A cap on trainable parameters cannot be checked outside the kernel (the grader sees
only the output), so the budget is the call's wall-clock time.
"""

from __future__ import annotations

import torch

from ...reference import finetune_challenge as ref
from ...reference.finetuning import review_dataset
from .. import register
from ..challenge import Attempt, Band, Challenge
from ..core import Case, Rule

TRAIN_DOCS, TEST_DOCS = 3000, 2000  # about 580 labelled reviews and 360 test reviews
MAX_LEN = 96


def _majority(train_texts, train_labels, valid_texts, valid_labels, test_texts):
    c = int(torch.as_tensor(train_labels).float().mean() >= 0.5)
    return torch.full((len(test_texts),), c, dtype=torch.int64)


def _untrained(*args):
    return ref.fit_and_predict(*args, train=False)


def _probe(*args):
    return ref.fit_and_predict(*args, train_blocks=0, lr=1e-2)


def _split(seed: int):
    texts, labels = review_dataset(TRAIN_DOCS, 1000 + seed, max_len=MAX_LEN)
    n = len(texts) * 9 // 10
    test_texts, _ = review_dataset(TEST_DOCS, 5000 + seed, max_len=MAX_LEN)
    return (texts[:n], torch.tensor(labels[:n]), texts[n:], torch.tensor(labels[n:]), test_texts)


@register
class SentimentFineTune(Challenge):
    """Test accuracy of a fine-tuned tiny GPT on hidden reviews."""
    id = "05.sentiment"
    entry = "classify_reviews"
    metric = "accuracy"
    unit = "accuracy"
    lower_is_better = False
    bands = (Band(0.84, 1.0, "A"), Band(0.78, 0.75, "B"), Band(0.72, 0.5, "C"), Band(0.64, 0.25, "D"))
    budget_s = 400
    forbid = (Rule("llmcourse.data", "learn from the labelled reviews only: the course's data "
                   "module computes every review's rating"),)
    attempts = (Attempt("majority class", _majority, 0.0),
                Attempt("untrained head (random, no training)", _untrained, 0.0),
                Attempt("linear probe (head only)", _probe, 0.25))

    def cases(self, seed: int, hidden: bool) -> list[Case]:
        case = Case("held-out test reviews", _split(seed))
        return [self.remember(case, seed)]  # the labels' seed never reaches the kernel

    def truth(self, case: Case):
        seed = self.recall(case)  # the test labels of the case's own seed
        return torch.tensor(review_dataset(TEST_DOCS, 5000 + seed, max_len=MAX_LEN)[1])

    def reference(self, train_texts, train_labels, valid_texts, valid_labels, test_texts):
        return ref.fit_and_predict(train_texts, train_labels, valid_texts, valid_labels,
                                   test_texts, train_blocks=2)
