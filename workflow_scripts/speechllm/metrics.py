"""Scores of the SpeechLLM tasks: word error rate (``jiwer``), corpus BLEU (``sacrebleu``) and
the relative WER degradation ΔWER of a pruned model. Torch-free.

Both tasks report the WER of the task's target text (the transcript for ASR, the German
translation for the ST stand-in), so the pruning curves are comparable across tasks; the ST
task also reports corpus BLEU (sacrebleu's defaults: 13a tokenisation, 4-grams, exponential
smoothing off). References and hypotheses are scored after the one normaliser
:func:`workflow_scripts.speechllm.text.normalize` (lowercase, punctuation stripped, whitespace
collapsed; numbers kept as written), BLEU too.

ΔWER has one definition here, (WER_n - WER_0) / WER_0 (:func:`delta_wer`): 0 for the unpruned
model, 0.25 = a quarter more errors (the paper's threshold), 1.0 = twice the baseline WER.
(The paper's Figure 2 caption reads "a value of 2.0 means twice the baseline WER", which is
the ratio WER_n / WER_0 = ΔWER + 1; its threshold "0.25 ... maximum allowed relative
degradation" is only meaningful as the difference, so that is the reading used.)
"""

from __future__ import annotations

import math

from workflow_scripts.speechllm.text import normalize


def _normalized(references: list[str], hypotheses: list[str]) -> tuple[list[str], list[str]]:
    if len(references) != len(hypotheses):
        raise ValueError("references and hypotheses differ in length")
    return [normalize(r) for r in references], [normalize(h) for h in hypotheses]


def wer(references: list[str], hypotheses: list[str]) -> float:
    """Corpus word error rate: (substitutions + deletions + insertions) / reference words, over
    all utterances (``jiwer.wer`` of the normalised lists). An empty hypothesis counts as all
    deletions."""
    import jiwer

    refs, hyps = _normalized(references, hypotheses)
    if not refs:
        return math.nan
    return float(jiwer.wer(refs, hyps))


def utterance_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(word errors S + D + I, reference words) of one utterance after normalisation; the
    corpus WER is the sum of the errors over the sum of the words."""
    import jiwer

    ref, hyp = normalize(reference), normalize(hypothesis)
    if not ref:
        return len(hyp.split()), 0
    out = jiwer.process_words(ref, hyp)
    return out.substitutions + out.deletions + out.insertions, len(ref.split())


def bleu(references: list[str], hypotheses: list[str]) -> float:
    """Corpus BLEU (0..100) of the normalised texts, one reference per hypothesis
    (``sacrebleu.corpus_bleu``)."""
    import sacrebleu

    refs, hyps = _normalized(references, hypotheses)
    if not refs:
        return math.nan
    return float(sacrebleu.corpus_bleu(hyps, [refs]).score)


def sentence_errors(references: list[str], hypotheses: list[str]) -> float:
    """Share of utterances whose normalised hypothesis differs from the normalised reference
    (sentence error rate)."""
    refs, hyps = _normalized(references, hypotheses)
    if not refs:
        return math.nan
    return sum(r != h for r, h in zip(refs, hyps, strict=True)) / len(refs)


def scores(references: list[str], hypotheses: list[str]) -> dict[str, float]:
    """WER, BLEU and sentence error rate of one task's outputs."""
    return {"wer": wer(references, hypotheses), "bleu": bleu(references, hypotheses),
            "ser": sentence_errors(references, hypotheses)}  # fmt: skip


def delta_wer(wer_pruned, wer_base):
    """ΔWER = (WER_n - WER_0) / WER_0, elementwise on arrays (see the module docstring). A
    perfect baseline (WER_0 = 0) gives 0 when the pruned model is perfect too and +inf
    otherwise: any error is an unbounded relative degradation, never within a threshold."""
    import numpy as np

    p, b = np.asarray(wer_pruned, float), np.asarray(wer_base, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = (p - b) / b
    d = np.where(b == 0, np.where(p == 0, 0.0, np.inf), d)
    d = np.where(np.isnan(p) | np.isnan(b), np.nan, d)
    return d if d.ndim else float(d)
