"""Who speaks in the synthetic corpus: speaker identities, their recording sessions, and the
identity-disjoint split.

An *identity* is an espeak-ng voice (accent) plus a voice variant (``en-us+m3``): what makes a
synthetic speaker recognisable. A *session* is one recording session of an identity: its own
speaking rate, pitch, pitch range, loudness and background-noise level. A session id is the
``<id>`` of ``<word>/<id>_nohash_<n>.wav``, the field Speech Commands calls the speaker.

The split is made on identities, so no voice+variant pair is heard in two splits: identities are
ranked by the SHA-1 bucket of their name (Speech Commands' ``which_set``), the lowest
``validation_percentage`` percent of the pool are validation, the next ``testing_percentage``
percent testing, the rest training. Sessions are then dealt to the splits in the same
proportions. See :func:`split_identities` for why ranks and not fixed bucket thresholds.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

SPLITS = ("training", "validation", "testing")
MAX_NUM_WAVS_PER_CLASS = 2**27 - 1  # as in the Speech Commands README's which_set


@dataclass(frozen=True)
class Session:
    """One recording session: its identity (voice + variant) and what is fixed within it."""

    session: str
    identity: str
    voice: str
    variant: str
    rate: int
    pitch: int
    pitch_range: int
    gain_db: float
    snr_db: float
    split: str


def identity_name(voice: str, variant: str) -> str:
    """The identity's name, which is also espeak-ng's voice name: ``voice+variant``."""
    return f"{voice}+{variant}" if variant else voice


def session_id(seed: int, split: str, index: int) -> str:
    """An 8-hex-digit id like the real data set's, a pure function of (seed, split, index)."""
    return hashlib.sha1(f"synthetic-session:{seed}:{split}:{index}".encode()).hexdigest()[:8]


def bucket(name: str) -> float:
    """Speech Commands' SHA-1 percentage bucket of ``name``, in [0, 100)."""
    h = int(hashlib.sha1(name.encode()).hexdigest(), 16)
    return (h % (MAX_NUM_WAVS_PER_CLASS + 1)) * (100.0 / MAX_NUM_WAVS_PER_CLASS)


def which_set(name: str, validation_percentage: float, testing_percentage: float) -> str:
    """Speech Commands' split rule: hash ``name`` into [0, 100) percent buckets."""
    pct = bucket(name)
    if pct < validation_percentage:
        return "validation"
    if pct < validation_percentage + testing_percentage:
        return "testing"
    return "training"


def split_sizes(n: int, validation_percentage: float, testing_percentage: float) -> dict:
    """How many of ``n`` items each split gets: round(n * percentage / 100), at least one for a
    positive percentage; training gets the rest. Raises ValueError when training would be
    empty."""
    sizes = {}
    for split, pct in (("validation", validation_percentage), ("testing", testing_percentage)):
        sizes[split] = max(1, round(n * pct / 100)) if pct > 0 else 0
    sizes["training"] = n - sizes["validation"] - sizes["testing"]
    if sizes["training"] < 1:
        raise ValueError(
            f"{n} items cannot be split {validation_percentage}% / {testing_percentage}% "
            "with at least one in each held-out split and one for training"
        )
    return {s: sizes[s] for s in SPLITS}


def split_identities(
    identities: list[str], validation_percentage: float, testing_percentage: float
) -> dict[str, str]:
    """identity -> split, a pure function of the identity set.

    Identities are ranked by ``bucket`` (the hash of which_set); the lowest
    :func:`split_sizes` ranks are validation, the next testing, the rest training. A pure
    which_set threshold would never move an identity when the pool grows, but leaves the share
    of a small pool to chance (168 identities at 10%: 17 +- 4 per held-out split, and a 4-
    identity test pool is often empty); ranking gives every split exactly its share. Adding m
    identities to the pool moves at most about 2m + 2 old ones across splits (those the new
    ones push over a rank boundary); removing is symmetric."""
    ranked = sorted(dict.fromkeys(identities), key=lambda name: (bucket(name), name))
    sizes = split_sizes(len(ranked), validation_percentage, testing_percentage)
    n_val, n_test = sizes["validation"], sizes["testing"]
    return {
        name: "validation" if r < n_val else "testing" if r < n_val + n_test else "training"
        for r, name in enumerate(ranked)
    }


def identity_pool(voices: list[str], variants: list[str]) -> list[tuple[str, str]]:
    """Every (voice, variant) pair of the config, in config order, without repeats."""
    return list(dict.fromkeys((v, var) for v in voices for var in variants))


def make_sessions(cfg: dict) -> list[Session]:
    """The corpus's ``cfg['speakers']`` sessions, a pure function of ``cfg``.

    Sessions are dealt to the splits in the split percentages (:func:`split_sizes`). Session j
    of a split belongs to identity ``order[j % k]``, where ``order`` is a seeded permutation of
    the split's k identities: every identity of the split is used once before any is used
    twice. Its rate, pitch, pitch range, gain and SNR are drawn from a generator seeded by
    (seed, split, j), so raising ``speakers`` adds sessions without changing existing ones."""
    pool = identity_pool(list(cfg["voices"]), list(cfg["variants"]))
    parts = {identity_name(v, var): (v, var) for v, var in pool}
    split_of = split_identities(
        list(parts), cfg["validation_percentage"], cfg["testing_percentage"]
    )
    counts = split_sizes(cfg["speakers"], cfg["validation_percentage"], cfg["testing_percentage"])
    sessions = []
    for si, split in enumerate(SPLITS):
        members = [name for name in parts if split_of[name] == split]
        if counts[split] and not members:  # pragma: no cover - split_sizes prevents it
            raise ValueError(f"no identity in the {split} split")
        order = np.random.default_rng([cfg["seed"], 11, si]).permutation(len(members))
        for j in range(counts[split]):
            name = members[order[j % len(members)]]
            rng = np.random.default_rng([cfg["seed"], 12, si, j])
            sessions.append(
                Session(
                    session=session_id(cfg["seed"], split, j),
                    identity=name,
                    voice=parts[name][0],
                    variant=parts[name][1],
                    rate=int(rng.integers(cfg["rate"][0], cfg["rate"][1] + 1)),
                    pitch=int(rng.integers(cfg["pitch"][0], cfg["pitch"][1] + 1)),
                    pitch_range=int(rng.integers(cfg["pitch_range"][0], cfg["pitch_range"][1] + 1)),
                    gain_db=round(float(rng.uniform(-12.0, 0.0)), 3),
                    snr_db=round(float(rng.uniform(cfg["snr_db"][0], cfg["snr_db"][1])), 3),
                    split=split,
                )
            )
    ids = [s.session for s in sessions]
    if len(set(ids)) != len(ids):  # pragma: no cover - 8 hex digits, a few hundred sessions
        raise ValueError("two sessions got the same 8-hex id; change corpus.seed")
    return sessions
