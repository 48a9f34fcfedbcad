"""Sentence-bootstrap intervals of corpus WER (torch-free), shared by the pruning summary
(:func:`workflow_scripts.speechllm.report.bootstrap`) and the healing table
(:func:`workflow_scripts.speechllm.healing_report.healing_bootstrap`): the test *sentences* are
resampled with replacement (every utterance of a drawn sentence comes along) and the corpus WER
of each resample is recomputed from the per-utterance records' error and word counts. One
draw matrix per SpeechLLM x task (the same seed and sentences), so intervals of differences
between states are paired."""

from __future__ import annotations

import numpy as np
import pandas as pd


def quantile_interval(x: np.ndarray, level: float) -> tuple[float, float]:
    """Percentile interval (order statistics: no interpolation, so +inf stays +inf)."""
    a = (1 - level) / 2
    lo, hi = np.quantile(x, [a, 1 - a], method="inverted_cdf")
    return float(lo), float(hi)


def resample_counts(sentences: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, sentences) matrix: how often each sentence is drawn in each resample of
    ``sentences`` draws with replacement (``np.random.default_rng(seed)``)."""
    draw = np.random.default_rng(seed).integers(sentences, size=(resamples, sentences))
    counts = np.zeros((resamples, sentences))
    np.add.at(counts, (np.arange(resamples)[:, None], draw), 1.0)
    return counts


def resampled_wer(records: pd.DataFrame, sentences: pd.Index,
                  counts: np.ndarray) -> tuple[np.ndarray, float]:  # fmt: skip
    """(corpus WER of every resample, point WER) of one state's records (``sentence_id``,
    ``errors``, ``words``); ``counts`` is :func:`resample_counts` over ``sentences``."""
    s = sentences.get_indexer(records.sentence_id)
    if (s < 0).any():
        raise ValueError("records name test sentences the unpruned model's records lack")
    E = np.bincount(s, weights=records.errors.astype(float), minlength=len(sentences))
    W = np.bincount(s, weights=records.words.astype(float), minlength=len(sentences))
    with np.errstate(divide="ignore", invalid="ignore"):
        return (counts @ E) / (counts @ W), E.sum() / W.sum()
