"""Tests for the mimicking networks (workflow_scripts.mimic.model, .targets, .train, .cost);
the shared latency helpers: tests/test_timing.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workflow_scripts.backbones.registry import count_parameters, encoder_of, small_config
from workflow_scripts.mimic.cost import cost_report, parameter_summary, replaced_stack_parameters
from workflow_scripts.mimic.model import (
    ClassifierHead,
    MimickedModel,
    Mimicker,
    load_mimicked,
    no_mimic,
    save_mimicked,
    sinusoidal_table,
    teacher_states,
)
from workflow_scripts.mimic.targets import choose_targets
from workflow_scripts.mimic.train import (
    Stage1Config,
    Stage2Config,
    mimic_logits,
    stage1_loss,
    train_stage1,
    train_stage2,
)

torch.set_num_threads(1)
QUIET = lambda *_: None


def tiny_classifier(arch="hubert", hidden=32, layers=4, labels=3, seed=0):
    from transformers import AutoModelForAudioClassification

    torch.manual_seed(seed)
    cfg = small_config(arch, dict(hidden=hidden, layers=layers, heads=2, ffn=64, classifier_proj=8))
    cfg.num_labels = labels
    return AutoModelForAudioClassification.from_config(cfg).eval()


# ---------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("dim", [768, 1024])
@pytest.mark.parametrize("kind", ["linear", "transformer"])
@pytest.mark.parametrize("depth", [1, 2])
def test_output_shapes(kind, depth, dim):
    torch.manual_seed(0)
    m = Mimicker(kind, depth, dim).eval()
    x = torch.randn(2, 5, dim)
    with torch.no_grad():
        outs = m(x)
    assert len(outs) == depth == m.n_outputs
    assert all(o.shape == (2, 5, dim) for o in outs)
    # the outputs are successive layers: the last one is layer 2 applied to the first
    if depth == 2:
        with torch.no_grad():
            torch.testing.assert_close(m.layers[1](outs[0]), outs[1])
    if kind == "linear":
        lay = m.layers[0]
        assert (lay.down.in_features, lay.down.out_features) == (dim, 64)
        assert (lay.up.in_features, lay.up.out_features) == (64, dim)
    else:
        assert isinstance(m.layers[0], torch.nn.TransformerEncoderLayer)
        assert m.layers[0].self_attn.num_heads == 8 and m.layers[0].self_attn.batch_first


def test_identity_and_heads_validation():
    x = torch.randn(2, 5, 12)
    ident = no_mimic(12)
    out = ident(x)
    assert len(out) == 1 and out[0] is x and count_parameters(ident) == 0
    with pytest.raises(ValueError, match="not divisible by heads=8"):
        Mimicker("transformer", 1, 12)
    assert Mimicker("transformer", 1, 12, heads=None).layers[0].self_attn.num_heads == 4
    with pytest.raises(ValueError, match="unknown mimicker kind"):
        Mimicker("conv", 1, 12)
    m = Mimicker.from_spec({"kind": "transformer", "depth": 2, "heads": 4, "ffn": 16}, 12)
    assert m.depth == 2 and m.layers[1].linear1.out_features == 16


# ------------------------------------------------------------------------------- positions
def _permuted_frames_change_output(m: Mimicker, x: torch.Tensor) -> bool:
    """Whether reversing the frames changes the output by more than reversing it."""
    with torch.no_grad():
        out = m(x)[-1]
        rev = m(x.flip(1))[-1].flip(1)
    return not torch.allclose(out, rev, atol=1e-5)


def test_positions_make_the_transformer_mimicker_order_aware():
    x = torch.randn(2, 7, 16)
    torch.manual_seed(0)
    plain = Mimicker("transformer", 1, 16, heads=4, ffn=8).eval()
    assert not _permuted_frames_change_output(plain, x)  # a bag of frames (the paper's)
    for positions in ("sinusoidal", "conv"):
        torch.manual_seed(0)
        m = Mimicker("transformer", 1, 16, heads=4, ffn=8, positions=positions).eval()
        assert _permuted_frames_change_output(m, x)
        # the layers are built before the positions: same initial weights as without them
        torch.testing.assert_close(m.layers[0].linear1.weight, plain.layers[0].linear1.weight)
    with pytest.raises(ValueError, match="unknown positions"):
        Mimicker("linear", 1, 16, positions="learned")
    with pytest.raises(ValueError, match="no positions"):
        Mimicker("identity", 0, 16, positions="conv")


@pytest.mark.parametrize("kernel", [3, 16])
def test_conv_positions_keep_the_frames_and_count_their_parameters(kernel):
    dim = 12
    plain = count_parameters(Mimicker("linear", 1, dim, width=4))
    m = Mimicker("linear", 1, dim, width=4, positions="conv", conv_kernel=kernel)
    assert count_parameters(m) - plain == dim * (kernel + 1)  # depthwise: one filter a channel
    assert m(torch.randn(3, 9, dim))[0].shape == (3, 9, dim)
    sin = Mimicker("linear", 1, dim, width=4, positions="sinusoidal")
    assert count_parameters(sin) == plain  # no parameters


def test_sinusoidal_table_known_values():
    pe = sinusoidal_table(3, 4)
    t = torch.arange(3.0)
    torch.testing.assert_close(pe[:, 0], torch.sin(t))
    torch.testing.assert_close(pe[:, 1], torch.cos(t))
    torch.testing.assert_close(pe[:, 2], torch.sin(t / 100))
    torch.testing.assert_close(pe[:, 3], torch.cos(t / 100))
    assert sinusoidal_table(2, 5).shape == (2, 5)  # odd widths too


def test_mimicked_model_with_positions_saves_and_loads(tmp_path):
    model = tiny_classifier("hubert")
    torch.manual_seed(1)
    spec = {"kind": "transformer", "depth": 1, "heads": 2, "ffn": 16, "positions": "conv",
            "conv_kernel": 5}  # fmt: skip
    mm = MimickedModel(model, Mimicker.from_spec(spec, 32)).eval()
    save_mimicked(mm, tmp_path / "m")
    back = load_mimicked(tmp_path / "m")
    assert back.mimicker.spec == mm.mimicker.spec
    x = torch.randn(2, 16000)
    with torch.no_grad():
        torch.testing.assert_close(back(x).logits, mm(x).logits)


# ---------------------------------------------------------------------------------- targets
def test_choose_targets_from_blocks_and_defaults():
    assert choose_targets(1, 12) == [12]
    assert choose_targets(1, 12, blocks=[(0, 4), (5, 12)]) == [12]
    # depth 2: the last layer of the first block, then the last layer
    assert choose_targets(2, 12, blocks=[(0, 4), (5, 12)]) == [4, 12]
    assert choose_targets(2, 24, blocks=[(9, 24), (0, 8)]) == [8, 24]  # unsorted input
    assert choose_targets(2, 12, blocks=[(0, 4), (5, 12)], pick="middle") == [2, 12]
    # a block that is only the stack input (index 0) is skipped
    assert choose_targets(2, 12, blocks=[(0, 0), (1, 6), (7, 12)]) == [6, 12]
    assert choose_targets(3, 12, blocks=[(0, 3), (4, 8), (9, 12)]) == [3, 8, 12]
    assert choose_targets(2, 12) == [6, 12]  # no blocks: evenly spaced
    with pytest.raises(ValueError, match="intermediate target"):
        choose_targets(2, 12, blocks=[(0, 12)])  # one block: nothing before the last


def test_choose_targets_explicit_validation():
    assert choose_targets(2, 12, blocks=[(0, 4), (5, 12)], explicit=[7, 11]) == [7, 11]
    with pytest.raises(ValueError, match="out of range"):
        choose_targets(2, 12, explicit=[3, 13])
    with pytest.raises(ValueError, match="out of range"):
        choose_targets(1, 12, explicit=[-1])
    with pytest.raises(ValueError, match="needs 2 target"):
        choose_targets(2, 12, explicit=[12])
    with pytest.raises(ValueError, match="strictly increasing"):
        choose_targets(2, 12, explicit=[8, 4])
    with pytest.raises(ValueError, match="valid inclusive range"):
        choose_targets(2, 12, blocks=[(0, 4), (5, 13)])


# ---------------------------------------------------------------------------------- stage 1
def linear_task(n=512, t=4, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, t, d, generator=g)
    w = torch.randn(d, d, generator=g) / d**0.5
    return x, x @ w


def test_stage1_learns_linear_map_from_float16_cache():
    x, y = linear_task()
    x16, y16 = x.numpy().astype(np.float16), y.numpy().astype(np.float16)  # a float16 cache
    torch.manual_seed(0)
    m = Mimicker("linear", 1, 8, width=64)
    tr, va = np.arange(448), np.arange(448, 512)
    before, _ = stage1_loss(m, x16, [y16], va)
    res = train_stage1(m, x16, [y16], tr, va, Stage1Config(60, lr=3e-3, batch_size=64), log=QUIET)
    after, _ = stage1_loss(m, x16, [y16], va)
    var = float(y[va].var())
    assert after < 0.01 * var < before
    assert len(res["history"]) == 60
    assert res["history"][-1]["train_loss"] < res["history"][0]["train_loss"]


def test_stage1_sums_losses_over_targets():
    x, y = linear_task(n=64)
    m = Mimicker("linear", 2, 8)
    total, per = stage1_loss(m, x, [y, 2 * y], np.arange(64), batch_size=10)
    with torch.no_grad():
        p = m(x)
    ref = [float(((p[0] - y) ** 2).mean()), float(((p[1] - 2 * y) ** 2).mean())]
    np.testing.assert_allclose(per, ref, rtol=1e-5)
    assert total == pytest.approx(sum(ref), rel=1e-5)
    with pytest.raises(ValueError, match="2 output"):
        train_stage1(m, x, [y], np.arange(32), np.arange(32, 64), Stage1Config(1), log=QUIET)


def test_stage1_keeps_best_validation_state():
    # training pulls the outputs towards 3 * W x, the validation targets are 0: the
    # validation loss is lowest early and rises as training proceeds.
    x, y = linear_task(n=256)
    targets = 3 * y
    targets[192:] = 0
    torch.manual_seed(0)
    m = Mimicker("linear", 1, 8)
    tr, va = np.arange(192), np.arange(192, 256)
    res = train_stage1(m, x, [targets], tr, va, Stage1Config(8, lr=1e-2, batch_size=32), log=QUIET)
    vals = [h["val_loss"] for h in res["history"]]
    assert vals[-1] > min(vals) * 1.5  # the case really has a late rise
    assert res["best_epoch"] == int(np.argmin(vals)) + 1 < len(vals)
    again, _ = stage1_loss(m, x, [targets], va)
    assert again == pytest.approx(min(vals), rel=1e-5)
    assert res["best_val_loss"] == pytest.approx(min(vals))


# ---------------------------------------------------------------------------------- stage 2
def class_task(n=192, t=5, d=16, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, t, d, generator=g)
    labels = x.mean(1)[:, :classes].argmax(1).numpy()
    return x.numpy(), labels


def tiny_head(d=16, classes=3, seed=0):
    torch.manual_seed(seed)
    return ClassifierHead(torch.nn.Linear(d, 8), torch.nn.Linear(8, classes))


def state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("kind", ["linear", "transformer"])
def test_stage2_frozen_mimicker_is_bit_identical(kind):
    x, labels = class_task()
    torch.manual_seed(0)
    m = Mimicker(kind, 2, 16, heads=4)
    head = tiny_head()
    m0, h0 = state(m), state(head)
    tr, va = np.arange(160), np.arange(160, 192)
    res = train_stage2(m, head, x, labels, tr, va, Stage2Config(2, batch_size=32), log=QUIET)
    assert same(state(m), m0)
    assert not same(state(head), h0)
    assert all(p.requires_grad for p in m.parameters())  # freezing was temporary
    assert len(res["history"]) == 2 and 0 <= res["best_val_accuracy"] <= 1


def test_stage2_unfrozen_mimicker_changes_and_frozen_head_does_not():
    x, labels = class_task()
    torch.manual_seed(0)
    m = Mimicker("linear", 1, 16)
    head = tiny_head()
    m0, h0 = state(m), state(head)
    tr, va = np.arange(160), np.arange(160, 192)
    cfg = Stage2Config(2, batch_size=32, freeze_mimicker=False, freeze_head=True)
    train_stage2(m, head, x, labels, tr, va, cfg, log=QUIET)
    assert not same(state(m), m0)
    assert same(state(head), h0)
    with pytest.raises(ValueError, match="nothing to train"):
        train_stage2(m, head, x, labels, tr, va, Stage2Config(1, freeze_head=True), log=QUIET)


def test_no_mimic_baseline_learns_head():
    x, labels = class_task(n=384)
    ident, head = no_mimic(16), tiny_head()
    tr, va = np.arange(320), np.arange(320, 384)
    chance = np.bincount(labels[va]).max() / len(va)
    cfg = Stage2Config(25, lr=1e-2, batch_size=32)
    res = train_stage2(ident, head, x, labels, tr, va, cfg, log=QUIET)
    accs = [h["val_accuracy"] for h in res["history"]]
    assert res["best_val_accuracy"] == max(accs) > max(0.8, chance + 0.2)
    logits = mimic_logits(ident, head, x, va[::-1].copy(), batch_size=16)
    acc = float((logits.argmax(1) == labels[va[::-1]]).mean())
    assert acc == pytest.approx(max(accs))  # the best head was restored; rows keep idx order


# ---------------------------------------------------------------------------------- model path
def test_head_and_mimicked_model_match_original():
    model = tiny_classifier("wavlm")
    x = torch.randn(2, 16000)
    with torch.no_grad():
        ref = model(x).logits
        proj, (last,) = teacher_states(model, x, [4])
        head = ClassifierHead.from_model(model)
        torch.testing.assert_close(head(last), ref, atol=1e-5, rtol=1e-4)
        # a "mimicker" that is the real stack reproduces the model exactly
        stack = encoder_of(model).encoder

        class StackAsMimicker(torch.nn.Module):
            def forward(self, h):
                return [stack(h).last_hidden_state]

        mm = MimickedModel(model, StackAsMimicker())
        torch.testing.assert_close(mm(x).logits, ref, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(mm.features(x), proj)
    assert head.projector is not model.projector  # a copy, not shared


def test_replaced_stack_parameters_and_summary():
    model = tiny_classifier("wav2vec2")
    base = encoder_of(model)
    expect = sum(p.numel() for n, p in model.named_parameters() if ".encoder." in f".{n}")
    assert replaced_stack_parameters(model) == expect
    m = Mimicker("linear", 2, 32)
    s = parameter_summary(model, m)
    front = count_parameters(base.feature_extractor) + count_parameters(base.feature_projection)
    head = count_parameters(model.projector) + count_parameters(model.classifier)
    assert s["mimicked_model_params"] == front + count_parameters(m) + head
    assert s["stack_param_reduction_pct"] == pytest.approx(
        100 * (1 - s["mimicker_params"] / expect)
    )


def test_cost_report_fewer_parameters_positive_latency():
    model = tiny_classifier("hubert", hidden=64, layers=4)
    m = Mimicker("linear", 2, 64, width=16)
    rep = cost_report(model, m, torch.randn(2, 16000), "cpu", warmup=1, repeats=3)
    assert rep["mimicker_params"] < rep["stack_params"]
    assert rep["mimicked_model_params"] < rep["model_params"]
    for k in ("stack_ms", "mimicker_ms", "model_ms", "mimicked_model_ms"):
        assert rep[k] > 0
    assert rep["frames"] == 49 and rep["batch_size"] == 2
    assert rep["stack_latency_reduction_pct"] == pytest.approx(
        100 * (1 - rep["mimicker_ms"] / rep["stack_ms"])
    )
    for pre in ("", "stack_"):  # each pair timed against each other, interleaved
        assert rep[f"{pre}speedup_lo"] <= rep[f"{pre}speedup"] <= rep[f"{pre}speedup_hi"]
    assert (rep["timing_precision"], rep["timing_device"]) == ("fp32", "cpu")
    assert rep["latency_threads"] == torch.get_num_threads()
