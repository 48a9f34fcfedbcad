"""Direct checks of two things every reported accuracy rests on: the bootstrap interval of an
accuracy (its width and orientation on a vector of known spread) and the split selection
(``split_rows`` returns only the requested split, and no speaker identity is in two splits)."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from workflow_scripts.backbones.evaluate import bootstrap_accuracy_ci, prediction_report
from workflow_scripts.data import loader as D


@pytest.mark.parametrize(("n_boot", "rel"), [(1000, 0.1), (4000, 0.05)])
def test_accuracy_ci_has_the_binomial_width_and_brackets_the_mean(n_boot, rel):
    """200 of 400 correct: the 95% percentile-bootstrap interval is about mean ± 1.96 standard
    errors, sqrt(p (1 - p) / n) = 0.025, so its width is about 0.098. Using ``alpha`` for
    ``alpha / 2`` gives the 90% interval (width about 0.08; about 0.088 if only one bound does);
    swapped bounds give lo > hi. Over 30 seeds the 95% width was 0.92-1.07 of 0.098 with the
    default 1000 resamples and 0.97-1.02 with 4000 (one-bound mutant at most 0.945)."""
    correct = np.zeros(400)
    correct[np.random.default_rng(1).permutation(400)[:200]] = 1.0
    p, n = correct.mean(), len(correct)
    lo, hi = bootstrap_accuracy_ci(correct, n_boot=n_boot)
    assert lo < p < hi, f"interval ({lo:.4f}, {hi:.4f}) does not bracket the mean {p}"
    expected = 2 * 1.96 * np.sqrt(p * (1 - p) / n)
    assert hi - lo == pytest.approx(expected, rel=rel), (
        f"width {hi - lo:.4f} is not the 95% binomial width {expected:.4f}"
    )
    # centred on the mean (the sampling distribution of a mean of 400 coin flips is symmetric)
    assert abs((hi - p) - (p - lo)) < 0.1 * expected, f"({lo}, {hi}) is lopsided about {p}"
    # the report that every cell writes carries the same interval
    rep = prediction_report(correct.astype(int), np.ones(n, dtype=int), 2)
    assert rep["ci_lo"] < rep["accuracy"] == p < rep["ci_hi"]
    assert rep["ci_hi"] - rep["ci_lo"] == pytest.approx(expected, rel=0.1)


def test_accuracy_ci_narrows_with_confidence_level():
    """A 99% interval is wider than the 95% one, the 80% one narrower (same resamples)."""
    correct = (np.arange(400) % 2).astype(float)
    widths = [
        np.subtract(*bootstrap_accuracy_ci(correct, alpha=a)[::-1]) for a in (0.2, 0.05, 0.01)
    ]
    assert widths[0] < widths[1] < widths[2], widths


def _read_tsv(path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def tiny_manifest(tiny_corpus):
    root, cfg, summary = tiny_corpus
    df, s = D.build_manifest(root, cfg["words"], progress=False)
    return root, df, s, summary


def test_split_rows_return_only_their_split_and_no_identity_is_in_two(tiny_manifest):
    """For every split, ``split_rows`` returns exactly that split's clips (checked against the
    manifest's column and against the corpus's own record, ``clips.tsv``), and the three
    selections share no session (the manifest's ``speaker``) and no speaker identity (voice +
    variant, from ``clips.tsv``)."""
    root, df, s, summary = tiny_manifest
    clips = _read_tsv(root / "clips.tsv").set_index("path")
    assert set(clips.index) == set(df.path)
    picked = {}
    for split in D.SPLITS:
        rows = D.split_rows(df, split)
        wrong = rows[rows.split != split]
        assert wrong.empty, (
            f"split_rows(..., {split!r}) returned {len(wrong)} clips of other splits: "
            f"{sorted(set(wrong.split))} {list(wrong.path[:3])}"
        )
        recorded = clips.loc[list(rows.path), "split"]
        assert (recorded == split).all(), (
            f"split_rows(..., {split!r}) returned clips that clips.tsv puts in "
            f"{sorted(set(recorded) - {split})}"
        )
        assert rows.usable.all() and not rows.path.duplicated().any()
        assert len(rows) == s[f"{split}_usable"] == summary[f"{split}_clips"]
        picked[split] = rows
    assert sorted(pd.concat(picked.values()).path) == sorted(df.path[df.usable])
    for a, b in itertools.combinations(D.SPLITS, 2):
        sessions = set(picked[a].speaker) & set(picked[b].speaker)
        assert not sessions, f"{a} and {b} share sessions {sorted(sessions)}"
        ids_a = set(clips.loc[list(picked[a].path), "identity"])
        ids_b = set(clips.loc[list(picked[b].path), "identity"])
        assert not ids_a & ids_b, f"{a} and {b} share identities {sorted(ids_a & ids_b)}"


def test_speakers_shared_across_splits_counts_every_pair_of_splits():
    """A speaker heard in any two splits counts once, whichever the two are: validation-testing
    as much as training-validation or training-testing."""
    speakers = {  # speaker -> the splits its clips are in
        "trval": ["training", "validation"],
        "trte": ["training", "testing"],
        "valte": ["validation", "testing"],
        "all3": ["training", "validation", "testing"],
        "tronly": ["training", "training"],
        "valonly": ["validation"],
        "teonly": ["testing", "testing"],
    }
    rows = [(spk, split) for spk, splits in speakers.items() for split in splits]
    df = pd.DataFrame({
        "path": [f"yes/{spk}_nohash_{i}.wav" for i, (spk, _) in enumerate(rows)],
        "speaker": [spk for spk, _ in rows], "split": [split for _, split in rows],
        "status": "ok", "usable": True,
    })  # fmt: skip
    assert D.summarize_manifest(df)["speakers_shared_across_splits"] == 4
    held_out = df[df.speaker.isin(["valte", "valonly", "teonly"])]
    assert D.summarize_manifest(held_out)["speakers_shared_across_splits"] == 1
    clean = df[df.speaker.str.endswith("only")]
    assert D.summarize_manifest(clean)["speakers_shared_across_splits"] == 0


def test_manifest_of_tiny_corpus_shares_no_speaker(tiny_manifest):
    _, df, s, _ = tiny_manifest
    assert s["speakers_shared_across_splits"] == 0
    # one validation session's clips relabelled as testing: a shared speaker is counted
    moved = df.copy()
    spk = sorted(df.speaker[df.split == "validation"])[0]
    first = moved.index[moved.speaker == spk][0]
    moved.loc[first, "split"] = "testing"
    assert D.summarize_manifest(moved)["speakers_shared_across_splits"] == 1
