"""What a job of the SpeechLLM stage reads of a speech split for its task(s): the utterances,
their features and what each is scored on.

A split of espeak-ng command sentences (:mod:`~workflow_scripts.speechllm.speech`) serves every
task with every utterance: its first ``limit`` utterances, each task's target computed from the
sentence (:func:`~workflow_scripts.speechllm.text.target_text`). A split made from real corpora
(:func:`~workflow_scripts.speechllm.corpora.write_corpus_split`: a ``task`` column) holds each
task's own utterances with their reference: a job of task *t* reads the first ``limit``
utterances of *t* (a multi-task job: of each of its tasks), and their texts are
:class:`Sentence` objects whose target is the manifest's reference. Positions are those of the
manifest, which are those of the split's feature file (:class:`Rows` reads them).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd


class Sentence(str):
    """An utterance's transcript with its target per task (``targets``; a corpus utterance:
    its own task's reference), which :func:`~workflow_scripts.speechllm.text.target_text`
    returns instead of computing one."""

    targets: dict[str, str]

    def __new__(cls, text: str, targets: dict[str, str]) -> Sentence:
        out = super().__new__(cls, text)
        out.targets = dict(targets)
        return out

    def __reduce__(self):
        return (Sentence, (str(self), self.targets))


def by_task(rows: pd.DataFrame) -> bool:
    """Whether a manifest holds each task's own utterances (a split made from corpora)."""
    return "task" in rows.columns


def positions(rows: pd.DataFrame, tasks: Iterable[str] | None, limit: int | None) -> np.ndarray:
    """The manifest positions a job of ``tasks`` reads: the first ``limit`` (None = all); for a
    split made from corpora, the first ``limit`` of each of ``tasks``, in manifest order."""
    n = len(rows) if limit is None else min(int(limit), len(rows))
    if not by_task(rows):
        return np.arange(n)
    if tasks is None:
        raise ValueError("a split made from corpora holds each task's own utterances: name the "
                         "task(s) to read")  # fmt: skip
    keep = []
    for t in tasks:
        mine = np.flatnonzero(rows.task.to_numpy() == t)
        if not mine.size:
            have = sorted(set(rows.task))
            raise ValueError(f"the split has no utterances of task {t!r} (it has {have})")
        keep.append(mine if limit is None else mine[: int(limit)])
    return np.sort(np.concatenate(keep))


def texts(rows: pd.DataFrame, pos: np.ndarray) -> list[str]:
    """The texts of the utterances at ``pos``: the sentences, or for a split made from corpora
    :class:`Sentence` objects carrying their task's reference."""
    sub = rows.iloc[pos]
    if not by_task(rows):
        return list(sub.text)
    return [Sentence(t, {k: r}) for t, k, r in zip(sub.text, sub.task, sub.reference, strict=True)]


def own_task(text: str, task: str) -> str:
    """The task an utterance is trained on when ``task`` is drawn for it: ``task``, or for a
    corpus utterance without a target for it, its own task."""
    targets = getattr(text, "targets", None)
    return task if targets is None or task in targets else next(iter(targets))


class Rows(Sequence):
    """The utterances at manifest positions ``pos`` of a feature sequence (a
    :class:`~workflow_scripts.speechllm.features.Features`): ``rows[i]`` and ``rows[a:b]`` (a
    list) read only those utterances' frames."""

    def __init__(self, feats, pos: np.ndarray) -> None:
        self.feats, self.pos = feats, np.asarray(pos, dtype=np.int64)
        self.dim = getattr(feats, "dim", None)
        if self.pos.size and self.pos.max() >= len(feats):
            raise IndexError(f"utterance {self.pos.max()} of a feature file of {len(feats)}")

    def __len__(self) -> int:
        return len(self.pos)

    def __getitem__(self, i):
        if isinstance(i, slice):
            sel = self.pos[i]
            if sel.size > 1 and (np.diff(sel) == 1).all():  # consecutive: one read
                return self.feats[int(sel[0]) : int(sel[-1]) + 1]
            return [self.feats[int(k)] for k in sel]
        return self.feats[int(self.pos[i])]
