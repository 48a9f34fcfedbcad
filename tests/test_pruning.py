"""Tests for the layer-pruning library (workflow_scripts.pruning: layers, strategies, sweeps,
heal) on tiny random models, CPU, one thread."""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import pytest
import torch

from workflow_scripts import pruning
from workflow_scripts.backbones.evaluate import accuracy_report, predict
from workflow_scripts.backbones.registry import (
    count_parameters,
    encoder_of,
    normalize_audio,
    small_config,
)

torch.set_num_threads(1)
ARCHS = ("wav2vec2", "hubert", "wavlm")
CPU = torch.device("cpu")
L = 4


@functools.cache
def tiny(arch: str, stable: bool = False, seed: int = 0):
    from transformers import AutoModelForAudioClassification

    cfg = small_config(arch, dict(hidden=32, layers=L, heads=2, ffn=64, classifier_proj=16))
    cfg.num_labels = 5
    cfg.do_stable_layer_norm = stable
    torch.manual_seed(seed)
    return AutoModelForAudioClassification.from_config(cfg).eval()


def clips(n: int = 6, samples: int = 4000, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, samples)).astype(np.float32)


def logits(model, audio, batch_size=4) -> np.ndarray:
    return predict(model, audio, CPU, batch_size=batch_size)


# ----------------------------------------------------------------------------------------
# Physical removal
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_removing_nothing_reproduces_baseline_exactly(arch):
    model, audio = tiny(arch), clips()
    pruned = pruning.remove_layers(model, [])
    assert pruned is not model
    assert all(
        p.data_ptr() != q.data_ptr()
        for p, q in zip(pruned.parameters(), model.parameters(), strict=True)
    )
    assert np.array_equal(logits(pruned, audio), logits(model, audio))


CASES = [(a, r) for a in ARCHS for r in ([1], [1, 2], [3], [0, 2])] + [
    ("wavlm", [0]),
    ("wavlm", [0, 1, 3]),
]


@pytest.mark.parametrize(("arch", "removed"), CASES)
def test_remove_layers_drops_blocks_and_round_trips(arch, removed, tmp_path):
    from transformers import AutoModelForAudioClassification

    model, audio = tiny(arch), clips()
    layers = encoder_of(model).encoder.layers
    per_block = count_parameters(layers[1])  # an ordinary block (WavLM's block 0 has the table)
    before = [p.clone() for p in model.parameters()]
    pruned = pruning.remove_layers(model, removed)

    k = len(removed)
    assert pruning.n_layers(pruned) == L - k
    assert pruned.config.num_hidden_layers == L - k
    assert encoder_of(pruned).config.num_hidden_layers == L - k
    assert pruned.config.kept_layer_ids == [i for i in range(L) if i not in removed]
    assert count_parameters(model) - count_parameters(pruned) == k * per_block
    assert pruning.transformer_parameters(model) - pruning.transformer_parameters(pruned) == (
        k * per_block
    )
    # head untouched, input model untouched
    assert torch.equal(pruned.classifier.weight, model.classifier.weight)
    assert pruning.n_layers(model) == L
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    # kept blocks carry their original weights
    kept = [i for i in range(L) if i not in removed]
    for new_i, old_i in enumerate(kept):
        new_ff = encoder_of(pruned).encoder.layers[new_i].feed_forward.output_dense.weight
        assert torch.equal(new_ff, layers[old_i].feed_forward.output_dense.weight)
    if arch == "wavlm":
        owners = [
            i
            for i, lay in enumerate(encoder_of(pruned).encoder.layers)
            if hasattr(lay.attention, "rel_attn_embed")
        ]
        assert owners == [0]
        table = encoder_of(pruned).encoder.layers[0].attention.rel_attn_embed.weight
        assert torch.equal(table, layers[0].attention.rel_attn_embed.weight)

    out = logits(pruned, audio)
    assert not np.allclose(out, logits(model, audio))
    pruned.save_pretrained(tmp_path, safe_serialization=True)
    loaded = AutoModelForAudioClassification.from_pretrained(tmp_path).eval()
    assert pruning.n_layers(loaded) == L - k
    assert count_parameters(loaded) == count_parameters(pruned)
    assert np.array_equal(logits(loaded, audio), out)


def test_repeated_pruning_keeps_original_layer_ids():
    once = pruning.remove_layers(tiny("hubert"), [1])
    twice = pruning.remove_layers(once, [1])  # current block 1 = original block 2
    assert twice.config.kept_layer_ids == [0, 3]


def test_wavlm_without_block0_uses_original_position_table():
    """Independent reference: hidden state entering block 0, then original blocks 1..3 with the
    relative position bias from block 0's table, then the head written out by hand."""
    model, audio = tiny("wavlm"), clips()
    pruned = pruning.remove_layers(model, [0])
    x = normalize_audio(torch.from_numpy(audio))
    layers = model.wavlm.encoder.layers
    with torch.inference_mode():
        h = model.wavlm(x, output_hidden_states=True).hidden_states[0]
        B, T, _ = h.shape
        att = layers[0].attention
        bias = att.compute_bias(T, T).unsqueeze(0).repeat(B, 1, 1, 1)
        bias = bias.view(B * att.num_heads, T, T)
        for lay in layers[1:]:
            h, _ = lay(h, position_bias=bias)
        ref = model.classifier(model.projector(h).mean(1)).numpy()
        got = pruned(x).logits.numpy()
    np.testing.assert_allclose(got, ref, atol=1e-6, rtol=0)


def test_invalid_removals_raise():
    model = tiny("wav2vec2")
    with pytest.raises(ValueError, match="all"):
        pruning.remove_layers(model, [0, 1, 2, 3])
    with pytest.raises(ValueError, match="range"):
        pruning.remove_layers(model, [4])
    with pytest.raises(ValueError, match="duplicate"):
        pruning.remove_layers(model, [1, 1])


# ----------------------------------------------------------------------------------------
# Strategies
# ----------------------------------------------------------------------------------------
def test_fixed_orders():
    assert pruning.removal_sets("forward", 6) == [
        [],
        [1],
        [1, 2],
        [1, 2, 3],
        [1, 2, 3, 4],
        [1, 2, 3, 4, 5],
    ]
    assert pruning.removal_sets("backward", 6) == [
        [],
        [5],
        [4, 5],
        [3, 4, 5],
        [2, 3, 4, 5],
        [1, 2, 3, 4, 5],
    ]
    # order 1, 5, 2, 4, 3
    assert pruning.removal_sets("forward_backward", 6) == [
        [],
        [1],
        [1, 5],
        [1, 2, 5],
        [1, 2, 4, 5],
        [1, 2, 3, 4, 5],
    ]
    assert pruning.removal_sets("forward_backward", 5) == [[], [1], [1, 4], [1, 2, 4], [1, 2, 3, 4]]
    assert pruning.removal_sets("forward", 3, keep_first=False) == [[], [0], [0, 1]]
    for L_ in (1, 2, 7, 12):
        for s in ("forward", "backward", "forward_backward", "random"):
            sets = pruning.removal_sets(s, L_)
            assert len(sets) == L_
            assert [len(x) for x in sets] == list(range(L_))
            assert all(x == sorted(x) and len(set(x)) == len(x) for x in sets)


@pytest.mark.parametrize("strategy", ["block_influence", "knn_block_influence"])
def test_score_orders(strategy):
    bi = [0.5, 0.1, 0.3, 0.05]
    assert pruning.removal_sets(strategy, 4, scores=bi) == [[], [3], [1, 3], [1, 2, 3]]
    low_first = [0.01, 0.1, 0.3, 0.05]  # block 0 least influential
    assert pruning.removal_sets(strategy, 4, scores=low_first) == [[], [0], [0, 3], [0, 1, 3]]
    assert pruning.removal_sets(strategy, 4, scores=low_first, keep_first=True) == [
        [],
        [3],
        [1, 3],
        [1, 2, 3],
    ]
    assert pruning.removal_sets(strategy, 3, scores=[0.2, 0.2, 0.1]) == [[], [2], [0, 2]]  # ties
    with pytest.raises(ValueError, match="one score per block"):
        pruning.removal_sets(strategy, 4, scores=[0.1, 0.2, 0.3])  # L-1 scores: wrong convention
    with pytest.raises(ValueError, match="finite"):
        pruning.removal_sets(strategy, 3, scores=[0.1, float("nan"), 0.3])


def test_angular_block_planted_minima():
    n_l = 6
    idx = np.arange(n_l + 1)
    D = 0.1 * np.abs(idx[:, None] - idx[None, :]).astype(float) + 0.5
    D[4, 5] = D[5, 4] = 0.01  # n=1: block 4 alone
    D[1, 3] = D[3, 1] = 0.02  # n=2: blocks 1, 2
    D[2, 5] = D[5, 2] = 0.03  # n=3: blocks 2, 3, 4
    sets = pruning.removal_sets("angular_block", n_l, scores=D)
    assert sets[0] == [] and sets[1] == [4] and sets[2] == [1, 2] and sets[3] == [2, 3, 4]
    # n=4 (no plant): all d(l, l+4) equal -> lowest start 0; n=5: start 0 as well
    assert sets[4] == [0, 1, 2, 3] and sets[5] == [0, 1, 2, 3, 4]
    assert not set(sets[1]) <= set(sets[2])  # not nested
    kf = pruning.removal_sets("angular_block", n_l, scores=D, keep_first=True)
    assert kf[4] == [1, 2, 3, 4] and kf[5] == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="distance matrix"):
        pruning.removal_sets("angular_block", n_l, scores=D[:-1, :-1])


def test_random_reproducible_and_seed_dependent():
    a = pruning.removal_sets("random", 12, seed=1)
    assert a == pruning.removal_sets("random", 12, seed=1)
    assert a != pruning.removal_sets("random", 12, seed=2)
    assert all(set(a[n]) <= set(a[n + 1]) for n in range(11))
    kf = pruning.removal_sets("random", 12, seed=3, keep_first=True)
    assert all(0 not in s for s in kf)


def test_similarity_greedy_with_known_costs():
    weights = np.array([5.0, 1.0, 3.0, 0.5, 2.0])
    calls = []

    def evaluator(sets):
        calls.append(sets)
        return [float(weights[s].sum()) for s in sets]

    sets = pruning.removal_sets("similarity_greedy", 5, evaluator=evaluator)
    assert sets == [[], [3], [1, 3], [1, 3, 4], [1, 2, 3, 4]]
    assert len(calls[0]) == 5 and len(calls[1]) == 4  # candidates shrink as blocks go
    assert pruning.removal_sets("similarity_greedy", 5, evaluator=evaluator, keep_first=True)[
        -1
    ] == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="evaluator"):
        pruning.removal_sets("similarity_greedy", 5)


def test_similarity_evaluator_matches_physical_pruning():
    model, audio = tiny("wav2vec2"), clips()
    ev = pruning.SimilarityEvaluator(model, audio, batch_size=4)
    sets = [[], [0], [1], [2], [3], [1, 3]]
    costs = ev(sets)
    x = normalize_audio(torch.from_numpy(audio))
    with torch.inference_mode():
        ref = model.wav2vec2(x).last_hidden_state.flatten(1)
        for s, c in zip(sets, costs, strict=True):
            h = pruning.remove_layers(model, s).wav2vec2(x).last_hidden_state.flatten(1)
            want = float((1 - torch.nn.functional.cosine_similarity(h, ref, dim=1)).mean())
            assert c == pytest.approx(want, abs=1e-6)
    assert costs[0] == pytest.approx(0.0, abs=1e-6)
    greedy = pruning.removal_sets("similarity_greedy", L, evaluator=ev)
    assert greedy[1] == [sets[1 + int(np.argmin(costs[1:5]))][0]]
    assert all(set(greedy[n]) <= set(greedy[n + 1]) for n in range(L - 1))


# ----------------------------------------------------------------------------------------
# Prefix resumption
# ----------------------------------------------------------------------------------------
BI = [0.3, 0.05, 0.2, 0.1]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("strategy", ["forward", "backward", "block_influence"])
def test_prefix_resumption_equals_physical_pruning(arch, strategy):
    model, audio = tiny(arch), clips()
    sets = pruning.removal_sets(strategy, L, scores=BI)
    got = pruning.sweep_logits(model, audio, sets, CPU, batch_size=4)
    assert got.shape == (L, len(audio), 5)
    assert np.array_equal(got[0], logits(model, audio))  # n = 0: exactly the unpruned model
    for s, lg in zip(sets, got, strict=True):
        np.testing.assert_allclose(lg, logits(pruning.remove_layers(model, s), audio), atol=1e-5)
    assert len({lg.tobytes() for lg in got}) == L  # every n gives different logits


@pytest.mark.parametrize("arch", ARCHS)
def test_prefix_resumption_stable_layer_norm_and_padding(arch):
    model = tiny(arch, stable=True)
    audio = clips()
    mask = np.ones(audio.shape, dtype=np.int64)
    mask[1, 2500:] = 0
    mask[4, 1200:] = 0
    sets = [[], [0], [2], [1, 2], [0, 2, 3], [3]]
    got = pruning.sweep_logits(model, audio, sets, CPU, batch_size=4, attention_mask=mask)
    for s, lg in zip(sets, got, strict=True):
        pruned = pruning.remove_layers(model, s)
        ref = []
        with torch.inference_mode():
            for a in range(0, len(audio), 4):
                m = torch.from_numpy(mask[a : a + 4])
                x = normalize_audio(torch.from_numpy(audio[a : a + 4]), m)
                ref.append(pruned(x, attention_mask=m).logits.numpy())
        np.testing.assert_allclose(lg, np.concatenate(ref), atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_pruning_keeps_the_final_layer_norm_of_pre_ln_models(arch):
    """Pre-LN ("stable layer norm"): after removing blocks, the last kept block's output still
    goes through encoder.layer_norm before the head, both in the physically pruned model and
    in the prefix-resumed sweep (whose logits equal the pruned model's full forward)."""
    model, audio = tiny(arch, stable=True), clips()
    x = normalize_audio(torch.from_numpy(audio))
    norm = encoder_of(model).encoder.layer_norm
    seen = {}

    def grab(module, args, out):
        seen["h"] = out[0] if isinstance(out, tuple) else out

    for s in ([], [3], [1, 3], [0, 1, 2]):
        pruned = pruning.remove_layers(model, s)
        enc = encoder_of(pruned).encoder
        assert torch.equal(enc.layer_norm.weight, norm.weight) and len(enc.layers) == L - len(s)
        handle = enc.layers[-1].register_forward_hook(grab)
        with torch.inference_mode():
            got = pruned(x).logits
            handle.remove()
            normed = enc.layer_norm(seen["h"])
            head = pruned.classifier(pruned.projector(normed).mean(1))
            unnormed = pruned.classifier(pruned.projector(seen["h"]).mean(1))
            [hidden] = pruning.PrefixCache(model, x).run([s], output="hidden")
        torch.testing.assert_close(got, head, atol=1e-6, rtol=1e-5)
        assert not torch.allclose(got, unnormed, atol=1e-3)
        torch.testing.assert_close(hidden, normed, atol=1e-5, rtol=1e-5)
        [sweep] = pruning.sweep_logits(model, audio, [s], CPU, batch_size=len(audio))
        np.testing.assert_allclose(sweep, got.numpy(), atol=1e-5)


def test_prefix_cache_reuses_prefix_blocks():
    """A backward sweep runs every block exactly once (all sets are prefixes of the full stack);
    a forward sweep runs block 0 once."""
    model = tiny("hubert")
    calls = {i: 0 for i in range(L)}
    handles = [
        lay.register_forward_hook(lambda m, a, o, i=i: calls.__setitem__(i, calls[i] + 1))
        for i, lay in enumerate(model.hubert.encoder.layers)
    ]
    try:
        x = normalize_audio(torch.from_numpy(clips(4)))
        cache = pruning.PrefixCache(model, x)
        assert all(v == 0 for v in calls.values())  # front capture stops before block 0
        cache.run(pruning.removal_sets("backward", L))
        assert calls == {0: 1, 1: 1, 2: 1, 3: 1}
        for i in calls:
            calls[i] = 0
        cache.run(pruning.removal_sets("forward", L))
        # kept: [0,1,2,3], [0,2,3], [0,3], [0] -> block 0 once, then 3 + 2 + 1 block calls
        assert calls == {0: 1, 1: 1, 2: 2, 3: 3}
    finally:
        for h in handles:
            h.remove()


# ----------------------------------------------------------------------------------------
# Sweep
# ----------------------------------------------------------------------------------------
def test_sweep_rows():
    model = tiny("wavlm")
    audio = clips(10)
    labels = np.random.default_rng(1).integers(0, 5, size=10)
    sets = pruning.removal_sets("backward", L)
    rows = pruning.sweep(model, audio, labels, "backward", sets, CPU, batch_size=4)
    base = accuracy_report(logits(model, audio), labels, 5)
    assert [r["n_removed"] for r in rows] == list(range(L))
    assert rows[0]["accuracy"] == base["accuracy"]
    assert (rows[0]["ci_lo"], rows[0]["ci_hi"]) == (base["ci_lo"], base["ci_hi"])
    assert rows[0]["relative_accuracy"] == 1.0
    for r, s in zip(rows, sets, strict=True):
        pruned = pruning.remove_layers(model, s)
        acc = accuracy_report(logits(pruned, audio), labels, 5)["accuracy"]
        assert r["accuracy"] == acc
        assert r["relative_accuracy"] == pytest.approx(acc / base["accuracy"])
        assert r["total_params"] == count_parameters(pruned)
        assert r["transformer_params"] == pruning.transformer_parameters(pruned)
        assert r["removed"] == s and r["layers_remaining"] == L - len(s)
        assert r["n_utterances"] == r["eval_clips"] == 10
    assert all(a["total_params"] > b["total_params"] for a, b in itertools.pairwise(rows))


def test_removal_latency_times_each_set_against_the_unpruned_model(monkeypatch):
    """Each distinct set is timed once, interleaved with the unpruned model (which runs as
    often as the pruned copy), on one batch; the columns say how."""
    from workflow_scripts.core import timing
    from workflow_scripts.pruning import sweeps

    model = tiny("hubert")
    sets = [[], [1], [1, 2], []]  # the empty set twice (as the seeds of random)
    pairs = []
    real = timing.compare_latency

    def spy(baseline, method, *args, **kw):
        pairs.append(1)
        return real(baseline, method, *args, **kw)

    monkeypatch.setattr(sweeps, "compare_latency", spy)
    rows = sweeps.removal_latency(model, sets, clips(3), CPU, warmup=0, repeats=2)
    assert len(pairs) == 3 and rows[0] == rows[3]  # the repeated set is timed once
    for r in rows:
        assert set(r) == set(sweeps.LATENCY_COLUMNS)
        assert r["latency_ms"] > 0 and r["base_latency_ms"] > 0
        assert r["speedup_lo"] <= r["speedup"] <= r["speedup_hi"]
        assert (r["timing_precision"], r["timing_device"]) == ("fp32", "cpu")
        assert r["latency_batch_size"] == 3 and r["latency_threads"] == torch.get_num_threads()
    off = sweeps.no_latency(CPU)
    assert set(off) == set(sweeps.LATENCY_COLUMNS) and math.isnan(off["speedup"])


# ----------------------------------------------------------------------------------------
# Healing
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["wav2vec2", "wavlm"])
def test_heal_with_lora(arch):
    model = tiny(arch)
    audio = clips(8)
    labels = np.arange(8) % 5
    pruned = pruning.remove_layers(model, [1, 2])
    before = {k: v.clone() for k, v in pruned.state_dict().items()}
    healed = pruning.heal_with_lora(
        pruned, audio, labels, steps=3, lr=1e-2, rank=4, alpha=8, batch_size=4
    )
    assert type(healed) is type(pruned)
    assert pruning.n_layers(healed) == 2 and healed.config.num_hidden_layers == 2
    assert count_parameters(healed) == count_parameters(pruned)
    sd = healed.state_dict()
    assert set(sd) == set(before)  # merged: no lora_A / base_layer keys left
    assert all(torch.equal(before[k], v) for k, v in pruned.state_dict().items())  # input kept
    targets = pruning.lora_target_modules(pruned)
    changed = {k for k in sd if not torch.equal(sd[k], before[k])}
    assert changed, "healing changed no weight"
    assert all(any(t + ".weight" in k for t in targets) for k in changed)
    assert not np.allclose(logits(healed, audio), logits(pruned, audio), atol=1e-6, rtol=0)


def test_heal_rejects_bypassed_lora_targets():
    """WavLM's attention reads q_proj.weight directly, so LoRA there would silently do nothing."""
    model = tiny("wavlm")
    with pytest.raises(RuntimeError, match="no gradient"):
        pruning.heal_with_lora(
            model,
            clips(4),
            np.arange(4),
            steps=1,
            batch_size=2,
            target_modules=["attention.q_proj", "attention.v_proj"],
        )


def test_healing_is_a_function_of_its_seed_not_of_the_global_rngs():
    """torch seeds its global generator randomly in every new process: the adapters' start and
    the SpecAugment masks (numpy's global RNG) must come from the healing seed."""
    model = tiny("wav2vec2")
    model.config.mask_time_prob = 0.5  # masks drawn from numpy's global RNG while training
    audio, labels = clips(8), np.arange(8) % 5
    pruned = pruning.remove_layers(model, [1])
    healed = []
    for noise in (1, 2):
        torch.manual_seed(noise)
        np.random.seed(noise)
        healed.append(pruning.heal_with_lora(pruned, audio, labels, steps=3, lr=1e-2, rank=4,
                                             alpha=8, batch_size=4, seed=7))  # fmt: skip
    for (k, a), b in zip(healed[0].state_dict().items(), healed[1].state_dict().values(),
                         strict=True):  # fmt: skip
        assert torch.equal(a, b), k
