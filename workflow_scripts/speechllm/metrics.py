"""Scores of the SpeechLLM tasks: word error rate (``jiwer``) and corpus BLEU (``sacrebleu``).

Both tasks report the WER of the task's target text (the transcript for ASR, the German
translation for the ST stand-in), so the pruning curves (relative WER degradation) are
comparable across tasks; the ST task also reports corpus BLEU (sacrebleu's defaults: 13a
tokenisation, 4-grams, exponential smoothing off), the usual translation score. Torch-free.
"""

from __future__ import annotations

import math


def wer(references: list[str], hypotheses: list[str]) -> float:
    """Corpus word error rate: (substitutions + deletions + insertions) / reference words, over
    all utterances (``jiwer.wer`` of the lists). An empty hypothesis counts as all deletions."""
    import jiwer

    if len(references) != len(hypotheses):
        raise ValueError("references and hypotheses differ in length")
    if not references:
        return math.nan
    return float(jiwer.wer(list(references), [h if h.strip() else "" for h in hypotheses]))


def bleu(references: list[str], hypotheses: list[str]) -> float:
    """Corpus BLEU (0..100) with one reference per hypothesis (``sacrebleu.corpus_bleu``)."""
    import sacrebleu

    if len(references) != len(hypotheses):
        raise ValueError("references and hypotheses differ in length")
    if not references:
        return math.nan
    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score)


def sentence_errors(references: list[str], hypotheses: list[str]) -> float:
    """Share of utterances whose hypothesis differs from the reference (sentence error rate)."""
    if not references:
        return math.nan
    return sum(r.split() != h.split() for r, h in zip(references, hypotheses, strict=True)) / len(
        references
    )


def scores(references: list[str], hypotheses: list[str]) -> dict[str, float]:
    """WER, BLEU and sentence error rate of one task's outputs."""
    return {"wer": wer(references, hypotheses), "bleu": bleu(references, hypotheses),
            "ser": sentence_errors(references, hypotheses)}  # fmt: skip


def relative_degradation(wer_pruned, wer_base, floor: float):
    """(WER_pruned - WER_base) / max(WER_base, floor), elementwise on arrays: 0 for the
    unpruned model, 0.25 = a quarter worse (the paper's threshold). ``floor`` keeps a
    near-perfect baseline from turning one error into an infinite degradation; above it, this
    is WER_p / WER_b - 1 (the paper's ΔWER minus one)."""
    import numpy as np

    return (wer_pruned - wer_base) / np.maximum(wer_base, floor)
