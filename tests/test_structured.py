"""Structured pruning (workflow_scripts.structured: gates, layers, shrink, stack, train, pruned,
run): hard-concrete gates, gated blocks equal to the transformers blocks, physical pruning equal
to masking, the Lagrangian reaching its target, the cache's state 0 as the stack input, one cell
end to end on a tiny model (in memory and from the rule's files)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import AutoModelForAudioClassification

from workflow_scripts.backbones.cache import extract_hidden_states
from workflow_scripts.backbones.registry import count_parameters, encoder_of, small_config
from workflow_scripts.structured.gates import HardConcrete
from workflow_scripts.structured.layers import prunable_parameters, structured_layers
from workflow_scripts.structured.plan import default_distill_layers
from workflow_scripts.structured.pruned import (
    load_pruned,
    pruned_model,
    save_pruned,
    structure_report,
)
from workflow_scripts.structured.run import array_batches, prune_cell
from workflow_scripts.structured.stack import GatedStack
from workflow_scripts.structured.train import target_at, train_gates

torch.set_num_threads(1)
TINY = {"layers": 3, "hidden": 32, "heads": 4, "ffn": 64}
ALL_GATES = {"layers": True, "heads": True, "head_dims": True, "ffn_units": True}


def tiny_model(arch: str, stable: bool = False, dtype=torch.float64, seed: int = 0, **spec):
    torch.manual_seed(seed)
    cfg = small_config(arch, {**TINY, **spec})
    cfg.do_stable_layer_norm = stable
    cfg.num_labels = 5
    return AutoModelForAudioClassification.from_config(cfg).to(dtype).eval()


def hidden_states(model, x):
    with torch.no_grad():
        return encoder_of(model)(x, output_hidden_states=True).hidden_states


def run_layers(layers, h, masks=None):
    pb = None
    masks = masks or [None] * len(layers)
    with torch.no_grad():
        for lay, m in zip(layers, masks, strict=True):
            if lay.wavlm:
                h, pb = lay(h, position_bias=pb, masks=m)
            else:
                h = lay(h, masks=m)
    return h


ARCHS = [(a, s) for a in ("wav2vec2", "hubert", "wavlm") for s in (False, True)]


# ----------------------------------------------------------------------------------------
# Hard-concrete gates
# ----------------------------------------------------------------------------------------
def test_hard_concrete_expected_l0_matches_closed_form_and_samples():
    torch.manual_seed(0)
    g = HardConcrete(6)
    with torch.no_grad():
        g.log_alpha.copy_(torch.tensor([-3.0, -1.0, 0.0, 0.5, 1.5, 4.0]))
    beta, lo, hi = 2 / 3, -0.1, 1.1
    closed = 1 / (1 + np.exp(-(g.log_alpha.detach().numpy() - beta * math.log(-lo / hi))))
    np.testing.assert_allclose(g.keep_prob().detach().numpy(), closed, rtol=1e-6)
    assert g.l0().item() == pytest.approx(closed.sum(), rel=1e-6)
    g.train()
    with torch.no_grad():
        z = torch.stack([g.sample() for _ in range(20000)])
    assert float(z.min()) == 0.0 and float(z.max()) == 1.0  # exact zeros and ones occur
    np.testing.assert_allclose((z > 0).float().mean(0).numpy(), closed, atol=0.015)


def test_deterministic_gates_zero_the_expected_number():
    g = HardConcrete(10)
    with torch.no_grad():
        g.log_alpha.copy_(torch.linspace(-4, 4, 10))
    z = g.deterministic()
    n_zero = round(10 - float(g.l0()))
    assert int((z == 0).sum()) == n_zero and 0 < n_zero < 10
    assert torch.all(z[:n_zero] == 0) and torch.all(z[n_zero:] > 0)  # smallest log-alphas


@pytest.mark.parametrize("ste", [False, True])
def test_straight_through_passes_gradient_through_the_clamp(ste):
    torch.manual_seed(0)
    g = HardConcrete(2000, init_log_alpha=6.0, straight_through=ste)  # mostly clamped at 1
    z = g.sample()
    z.sum().backward()
    clamped = (z.detach() == 1.0).numpy()
    assert clamped.mean() > 0.5
    grad = g.log_alpha.grad.numpy()
    if ste:
        assert np.all(grad[clamped] >= 0) and (grad[clamped] > 0).mean() > 0.99
    else:
        assert np.all(grad[clamped] == 0)


# ----------------------------------------------------------------------------------------
# Gated blocks equal the transformers blocks; pruning equals masking
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch, stable", ARCHS)
def test_gates_at_one_leave_outputs_unchanged(arch, stable):
    model = tiny_model(arch, stable)
    x = torch.randn(2, 8000, dtype=torch.float64)
    hs = hidden_states(model, x)
    stack = GatedStack.from_model(model, gates=ALL_GATES).double().eval()
    ones = []
    for lay in stack.layers:
        H, d, n = len(lay.heads), len(lay.dims[0]), lay.intermediate_dense.out_features
        one = torch.ones((), dtype=torch.float64)
        ones.append({"mha": one, "ffn": one, "head": torch.ones(H, dtype=torch.float64),
                     "dim": torch.ones(H, d, dtype=torch.float64),
                     "unit": torch.ones(n, dtype=torch.float64)})  # fmt: skip
    with torch.no_grad():
        out = stack(hs[0], mode="ones")
    for i in range(len(hs)):  # every state, incl. the last (raw block output in both variants)
        torch.testing.assert_close(out[i], hs[i], rtol=0, atol=1e-10)
    torch.testing.assert_close(run_layers(stack.layers, hs[0], ones), hs[-1], rtol=0, atol=1e-10)
    # the blocks dropped into the classifier give its logits
    swapped = pruned_model(model, structured_layers(model)).eval()
    with torch.no_grad():
        torch.testing.assert_close(swapped(x).logits, model(x).logits, rtol=0, atol=1e-10)


def random_masks(layers, seed=0):
    g = torch.Generator().manual_seed(seed)
    masks = []
    for lay in layers:
        H, d, n = len(lay.heads), len(lay.dims[0]), lay.intermediate_dense.out_features

        def gate(*shape, p=0.4):
            u = torch.rand(*shape, generator=g, dtype=torch.float64)
            keep = torch.rand(*shape, generator=g, dtype=torch.float64) > p
            return keep * (0.5 + 0.5 * u)  # zeros and soft values

        masks.append({"mha": torch.tensor(1.0, dtype=torch.float64), "head": gate(H),
                      "dim": gate(H, d), "ffn": torch.tensor(0.8, dtype=torch.float64),
                      "unit": gate(n, p=0.5)})  # fmt: skip
    masks[1]["mha"] = torch.tensor(0.0, dtype=torch.float64)  # a whole attention sublayer
    masks[2]["head"][:] = 0.0  # every head of a block (out-projection bias remains)
    return masks


@pytest.mark.parametrize("arch, stable", ARCHS)
def test_physical_pruning_equals_masking_with_fewer_parameters(arch, stable, tmp_path):
    model = tiny_model(arch, stable)
    x = torch.randn(2, 8000, dtype=torch.float64)
    hs = hidden_states(model, x)
    layers = structured_layers(model)
    masks = random_masks(layers)
    folded = [lay.fold(m) for lay, m in zip(layers, masks, strict=True)]
    masked_out = run_layers(layers, hs[0], masks)
    torch.testing.assert_close(run_layers(folded, hs[0]), masked_out, rtol=0, atol=1e-5)
    assert len({len(d) for lay in folded for d in lay.dims}) > 1  # heads of unequal widths
    kept = sum(lay.prunable_parameters() for lay in folded)
    assert kept < prunable_parameters(model)
    pruned = pruned_model(model, folded).eval()
    # only attention / FFN parameters went (and WavLM's per-head gate constants of removed heads)
    consts = sum(lay.orig_heads - len(lay.heads) for lay in folded) if arch == "wavlm" else 0
    removed = prunable_parameters(model) - kept + consts
    assert count_parameters(pruned) == count_parameters(model) - removed
    assert folded[1].q_proj is None and not folded[1].mha
    # a saved pruned model loads back with the same logits
    save_pruned(pruned.float(), tmp_path / "p")
    base = tmp_path / "base"
    model.float().save_pretrained(base)
    loaded = load_pruned(tmp_path / "p", base)
    xf = x.float()
    with torch.no_grad():
        torch.testing.assert_close(loaded(xf).logits, pruned.float()(xf).logits)


def test_expected_sparsity_is_exact_for_binary_gates():
    model = tiny_model("wavlm")
    stack = GatedStack.from_model(model, gates=ALL_GATES).double()
    torch.manual_seed(1)
    with torch.no_grad():
        for p in stack.gate_parameters():
            p.copy_(torch.where(torch.rand(p.shape) < 0.4, -60.0, 60.0))
    layers = stack.pruned_layers()
    rep = structure_report(layers, stack.total_prunable())
    assert 0.2 < rep["achieved_sparsity"] < 0.99
    assert float(stack.expected_sparsity()) == pytest.approx(rep["achieved_sparsity"], abs=1e-9)
    assert rep["kept_heads"] == [len(lay.heads) if lay.mha else 0 for lay in layers]


def test_stable_layer_norm_sublayer_gates_make_a_block_the_identity():
    model = tiny_model("hubert", stable=True)
    lay = structured_layers(model)[0]
    zero = torch.tensor(0.0, dtype=torch.float64)
    gone = lay.fold({"mha": zero, "ffn": zero})
    assert gone.prunable_parameters() == 0
    h = torch.randn(2, 7, 32, dtype=torch.float64)
    torch.testing.assert_close(gone(h), h, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------
# The cache's state 0 is the stack's input
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch, stable", [("wav2vec2", False), ("wavlm", False), ("hubert", True)])
def test_stack_from_cached_state_zero_reproduces_the_cached_last_state(arch, stable):
    model = tiny_model(arch, stable, dtype=torch.float32)
    audio = np.random.default_rng(0).standard_normal((4, 8000)).astype(np.float32)
    cache = extract_hidden_states(model, audio, torch.device("cpu"), progress=False)
    H = cache["hidden_states"]  # float16, (L+1, N, T, D)
    stack = GatedStack.from_model(model).eval()
    with torch.no_grad():
        out = stack(torch.from_numpy(H[0].astype(np.float32)), mode="ones")
    last = torch.from_numpy(H[-1].astype(np.float32))
    torch.testing.assert_close(out[len(H) - 1], last, rtol=0, atol=0.02)  # float16 rounding


# ----------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------
def teacher_data(model, n=48, t=12, seed=0):
    torch.manual_seed(seed)
    x0 = torch.randn(n, t, model.config.hidden_size)
    with torch.no_grad():
        out = GatedStack.from_model(model).eval()(x0, mode="ones")
    L = model.config.num_hidden_layers
    return x0.numpy(), {i: out[i].numpy() for i in default_distill_layers(L)}


@pytest.mark.parametrize("target", [0.3, 0.6])
def test_lagrangian_drives_sparsity_to_the_target(target):
    model = tiny_model("hubert", dtype=torch.float32, layers=2, hidden=64, ffn=256)
    x0, teacher = teacher_data(model, n=64, t=16)
    stack = GatedStack.from_model(model, gates={"heads": True, "head_dims": True,
                                                  "ffn_units": True})  # fmt: skip
    hist = train_gates(stack, x0, teacher, target, steps=300, batch_size=8, gate_lr=0.05,
                         lambda_lr=0.5, warmup_frac=0.3)  # fmt: skip
    assert hist[0]["expected_sparsity"] < 0.05  # gates start open
    assert hist[-1]["lambda2"] > 0  # ascent on the quadratic multiplier
    rep = structure_report(stack.pruned_layers(), stack.total_prunable())
    assert abs(rep["achieved_sparsity"] - target) <= 0.02
    assert abs(hist[-1]["expected_sparsity"] - target) <= 0.02


def test_target_warms_up_linearly():
    ts = [target_at(s, 100, 0.6, 0.3) for s in range(100)]
    assert ts[0] == pytest.approx(0.02) and ts[14] == pytest.approx(0.3)
    assert ts[29:] == [0.6] * 71
    assert default_distill_layers(12) == [4, 8, 12]


def tiny_prune_setup(steps: int):
    """A tiny WavLM, its teacher data, 10 random clips with labels and a prune_cell config
    of ``steps`` gate steps (shared by the cell tests)."""
    model = tiny_model("wavlm", dtype=torch.float32)
    x0, teacher = teacher_data(model, t=24)
    rng = np.random.default_rng(0)
    audio = rng.standard_normal((10, 8000)).astype(np.float32)
    labels = rng.integers(0, 5, 10)
    cell = {"target": 0.5, "gates": {"heads": True, "head_dims": False, "ffn_units": True},
            "init_log_alpha": 3.0, "straight_through": True, "steps": steps, "batch_size": 4,
            "lr": 2e-4, "gate_lr": 0.05, "lambda_lr": 0.5, "warmup_frac": 0.3,
            "distill": {"loss": "mse", "cos_weight": 1.0}, "seed": 0, "eval_batch_size": 4,
            "latency": {"batch_size": 2, "warmup": 0, "repeats": 1},
            "finetune": {"steps": 2, "batch_size": 4, "lr": 1e-4, "seed": 0}}  # fmt: skip
    return model, x0, teacher, audio, labels, cell


def test_prune_cell_on_a_tiny_model(tmp_path):
    model, x0, teacher, audio, labels, cell = tiny_prune_setup(steps=20)
    row, hist, _ = prune_cell(model, cell, x0, teacher, array_batches(audio, labels, 4),
                              "cpu", train_data=lambda: (audio, labels),
                              out_dir=tmp_path / "m")  # fmt: skip
    assert len(hist) == 20 and row["target_sparsity"] == 0.5
    assert len(row["kept_heads"]) == 3 and all(0 <= h <= 4 for h in row["kept_heads"])
    assert row["total_params"] == row["base_total_params"] - (
        row["prunable_params"] - row["prunable_params_kept"]
    )
    assert row["achieved_sparsity"] == pytest.approx(
        1 - row["prunable_params_kept"] / row["prunable_params"]
    )
    assert row["retained"] == pytest.approx(row["accuracy"] / row["base_accuracy"])
    assert not math.isnan(row["finetuned_accuracy"]) and row["latency_ms"] > 0
    assert row["base_latency_ms"] > 0 and row["speedup_lo"] <= row["speedup"] <= row["speedup_hi"]
    assert (row["timing_precision"], row["timing_device"]) == ("fp32", "cpu")
    assert (tmp_path / "m" / "model.safetensors").is_file()


def rule_files(tmp_path, model):
    """What a structured cell reads: the fine-tuned model folder, its training-split cache, a
    corpus of wav files and the manifest listing them."""
    import pandas as pd
    import soundfile as sf

    from workflow_scripts.backbones.cache import extract_hidden_states
    from workflow_scripts.backbones.cachefile import write_cache

    model.save_pretrained(tmp_path / "finetuned")
    rng = np.random.default_rng(0)
    rows = []
    for split, n in (("training", 6), ("testing", 5)):
        for i in range(n):
            p = f"w{i % 5}/{split}_{i}.wav"
            (tmp_path / "corpus" / f"w{i % 5}").mkdir(parents=True, exist_ok=True)
            sf.write(tmp_path / "corpus" / p, (0.1 * rng.standard_normal(16000)), 16000)
            rows.append({"path": p, "label_idx": i % 5, "split": split, "usable": True})
    manifest = pd.DataFrame(rows)
    manifest.to_parquet(tmp_path / "manifest.parquet")
    train = manifest[manifest.split == "training"]
    audio = np.stack([sf.read(tmp_path / "corpus" / p, dtype="float32")[0] for p in train.path])
    arrays = extract_hidden_states(model, audio, torch.device("cpu"), progress=False)
    write_cache(tmp_path / "train.safetensors", arrays, train.label_idx.to_numpy(),
                list(train.path))  # fmt: skip
    return {"model": str(tmp_path / "finetuned"),
            "train_cache": str(tmp_path / "train.safetensors"),
            "manifest": str(tmp_path / "manifest.parquet")}  # fmt: skip


def test_run_cell_from_the_rule_files(tmp_path):
    from workflow_scripts.structured.run import run_cell

    model = tiny_model("hubert", dtype=torch.float32)
    inputs = rule_files(tmp_path, model)
    cell = {"target": 0.4, "gates": {"heads": True, "head_dims": True, "ffn_units": True},
            "init_log_alpha": 3.0, "straight_through": False, "steps": 3, "batch_size": 2,
            "lr": 2e-4, "gate_lr": 0.05, "lambda_lr": 0.5, "warmup_frac": 0.3, "seed": 0,
            "distill": {"layers": [2, 3], "loss": "l1", "cos_weight": 1.0},
            "train_clips": 4, "test_clips": 3, "eval_batch_size": 4,
            "latency": {"batch_size": 2, "warmup": 0, "repeats": 1},
            "finetune": {"steps": 1, "batch_size": 2, "lr": 1e-4, "seed": 0,
                         "train_clips": 3}}  # fmt: skip
    logged = []
    df, _ = run_cell(inputs, cell, str(tmp_path / "corpus"), model="tiny",
                     out_dir=tmp_path / "pruned", log=logged.append)  # fmt: skip
    assert len(df) == 1 and list(df.columns[:2]) == ["model", "target_sparsity"]
    row = df.iloc[0]
    assert row.model == "tiny" and list(row.distill_layers) == [2, 3]
    assert row.n_train_clips == 4 and row.n_utterances == row.eval_clips == 3
    assert row.finetune_steps == 1
    assert not math.isnan(row.finetuned_accuracy)
    assert any("short fine-tune on 3 training clips" in m for m in logged)
    loaded = load_pruned(tmp_path / "pruned", inputs["model"])
    assert count_parameters(loaded) == row.total_params
    alone = load_pruned(tmp_path / "pruned")  # from its own config.json, no base model
    for (k, a), b in zip(loaded.state_dict().items(), alone.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    bad = {**cell, "distill": {**cell["distill"], "layers": [4]}}
    with pytest.raises(ValueError, match=r"structured.distill.layers \[4\] out of range 1..3"):
        run_cell(inputs, bad, str(tmp_path / "corpus"), model="tiny", out_dir=tmp_path / "x",
                 log=logged.append)  # fmt: skip


def test_structured_cell_is_a_function_of_its_seed_not_of_the_global_rng(tmp_path):
    """The gates' initial noise must come from the cell's seed (torch seeds its global
    generator randomly in every new process)."""
    from workflow_scripts.structured.run import run_cell

    model = tiny_model("hubert", dtype=torch.float32)
    inputs = rule_files(tmp_path, model)
    cell = {"target": 0.4, "gates": {"heads": True, "head_dims": True, "ffn_units": True},
            "init_log_alpha": 3.0, "straight_through": False, "steps": 3, "batch_size": 2,
            "lr": 2e-4, "gate_lr": 0.05, "lambda_lr": 0.5, "warmup_frac": 0.3, "seed": 0,
            "distill": {"layers": [2, 3], "loss": "l1", "cos_weight": 1.0},
            "train_clips": 4, "test_clips": 3, "eval_batch_size": 4,
            "latency": {"batch_size": 2, "warmup": 0, "repeats": 1},
            "finetune": {"steps": 0}}  # fmt: skip
    runs = []
    for noise in (1, 2):
        torch.manual_seed(noise)
        df, _ = run_cell(inputs, cell, str(tmp_path / "corpus"), model="tiny",
                         out_dir=tmp_path / f"pruned{noise}", log=lambda _m: None)  # fmt: skip
        runs.append(df.drop(columns=[c for c in df if "latency" in c or "speedup" in c
                                     or c.endswith("seconds")]))  # fmt: skip
    import pandas as pd

    pd.testing.assert_frame_equal(runs[0], runs[1])
