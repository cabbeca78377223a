"""Shared builders for the learning-loop tests: a small imported data set and fast fit parameters."""

from __future__ import annotations

from feedback.models import EvalOutcome, EvalPrompt

FAST_FIT = {
    "ensemble": 1,
    "max_rounds": 40,
    "text_dim": 8,
    "coarse_centroids": 3,
    "fine_centroids": 6,
    "folds": 3,
}
CODE = "Write a Python function that parses this CSV file and returns the rows sorted by date: {i}"
CHAT = "What is a good name for a cat that likes to sleep all day? Idea number {i}"


def make_eval_data(n: int = 40) -> None:
    """Imported outcomes where `large` beats `small` on code and they tie on chit-chat."""
    for i in range(n):
        code = EvalPrompt.objects.create(source="unit", external_id=f"code-{i}", prompt=CODE.format(i=i))
        chat = EvalPrompt.objects.create(source="unit", external_id=f"chat-{i}", prompt=CHAT.format(i=i))
        for model, code_score in (("small", 0.0 if i % 5 else 1.0), ("medium", 0.6), ("large", 1.0)):
            EvalOutcome.objects.create(prompt=code, model_name=model, score=code_score, output_tokens=300)
            EvalOutcome.objects.create(
                prompt=chat, model_name=model, score=1.0 if i % 3 else 0.0, output_tokens=40
            )
