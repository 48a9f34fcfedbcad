"""Rule adapter: one mimic cell (model x mimicker type x depth), trained from the caches.

Stage 1 (MSE to the teacher states) and stage 2 (NLL through the fine-tuned head) read only the
cached feature projections and hidden states: fit on the training-split cache, best epoch by
the validation-split cache. Test accuracy comes from the testing-split cache (the same
float16 feature projections the mimicker was trained on); the mimicked model itself
(MimickedModel: audio -> front end -> mimicker -> head) runs on raw test audio for the latency
measurement and for a recorded check that it gives the same logits as the cached path.
"""

import json

import numpy as np
import pandas as pd
import torch

from workflow_scripts.backbones.cache import cache_info, read_array, read_layers
from workflow_scripts.backbones.finetune import accuracy_report, predict
from workflow_scripts.backbones.registry import load_classifier, normalize_audio, pick_device
from workflow_scripts.core.provenance import write_parquet
from workflow_scripts.core.rule import RuleContext
from workflow_scripts.data.loader import load_split
from workflow_scripts.mimic import core as mimic
from workflow_scripts.mimic.cells import NO_MIMIC, frozen_outputs, target_layers

ctx = RuleContext(snakemake)
torch.set_num_threads(snakemake.threads)
cell, inp = ctx.slice, snakemake.input
kind, depth, model_name = cell["kind"], cell["depth"], cell["model"]
log = ctx.log.info
device = pick_device()

model = load_classifier(inp.model).eval()
n_layers, dim = model.config.num_hidden_layers, model.config.hidden_size
n_classes = model.config.num_labels

# ---- targets and cached data (no backbone forward pass: training and testing use caches)
blocks = pd.read_csv(inp.blocks) if "blocks" in inp.keys() else None
if kind == NO_MIMIC:
    layers, source = [], "none"
else:
    layers, source = target_layers(depth, n_layers, model_name, cell.get("targets"), blocks)
log("target layers %s (%s)", layers, source)
caches = (inp.train_cache, inp.val_cache, inp.test_cache)
if len({cache_info(p)["metadata"].get("model_sha256") for p in caches}) != 1:
    raise ValueError(f"the caches {caches} come from different models")
n_tr = cache_info(inp.train_cache)["shapes"]["labels"][0]
fp = np.concatenate([read_array(p, "feature_projection") for p in (inp.train_cache, inp.val_cache)])
labels = np.concatenate([read_array(p, "labels") for p in (inp.train_cache, inp.val_cache)])
if fp.shape[-1] != dim:
    raise ValueError(f"cache hidden size {fp.shape[-1]} != model hidden size {dim}")
teacher = []
if layers:
    tr, va = read_layers(inp.train_cache, layers), read_layers(inp.val_cache, layers)
    teacher = [np.concatenate([a, b]) for a, b in zip(tr, va, strict=True)]
    del tr, va
train_idx, val_idx = np.arange(n_tr), np.arange(n_tr, len(fp))
log("cache: %d training + %d validation clips, %s", n_tr, len(val_idx), fp.shape[1:])

# ---- the mimicker, stage 1, stage 2
torch.manual_seed(cell["seed"])
if kind == NO_MIMIC:
    mimicker = mimic.no_mimic(dim)
else:
    spec = cell["layer"]
    mimicker = mimic.Mimicker(kind, depth, dim, spec.get("width", 64), spec.get("heads", 8),
                              spec.get("ffn"), spec.get("dropout", 0.1))  # fmt: skip
head = mimic.ClassifierHead.from_model(model)
curves, s1 = [], None
if kind != NO_MIMIC:
    st = cell["stage1"]
    s1 = mimic.train_stage1(mimicker, fp, teacher, train_idx, val_idx, st["epochs"], st["lr"],
                            st["batch_size"], device, log, cell["seed"])  # fmt: skip
    curves += [{"stage": 1, **h, "best": h["epoch"] == s1["best_epoch"]} for h in s1["history"]]
del teacher
st2 = cell["stage2"]
freeze_mim = True if kind == NO_MIMIC else st2["freeze_mimicker"]
freeze_head = False if kind == NO_MIMIC else st2["freeze_head"]
s2_mim, s2_in, s2 = mimicker, fp, None
if st2["epochs"] > 0 and not (freeze_mim and freeze_head):
    if freeze_mim and kind != NO_MIMIC:  # what a frozen mimicker feeds the head every epoch
        s2_mim, s2_in = mimic.no_mimic(dim), frozen_outputs(mimicker, fp, st2["batch_size"], device)
    s2 = mimic.train_stage2(s2_mim, head, s2_in, labels, train_idx, val_idx, st2["epochs"],
                            st2["lr"], st2["batch_size"], device, freeze_mim, freeze_head, log,
                            cell["seed"])  # fmt: skip
    curves += [{"stage": 2, **h, "best": h["epoch"] == s2["best_epoch"]} for h in s2["history"]]
else:
    log("stage 2 skipped (epochs 0, or mimicker and head both frozen)")
val_logits = mimic.mimic_logits(s2_mim, head, s2_in, val_idx, st2["batch_size"], device)
val_acc = float((val_logits.argmax(1) == labels[val_idx]).mean())
del s2_in, s2_mim
del fp

# ---- test accuracy on the testing-split cache, vs the unpruned backbone on the same clips
fp_te, y = read_array(inp.test_cache, "feature_projection"), read_array(inp.test_cache, "labels")
test_rows = np.arange(len(y))
logits = mimic.mimic_logits(mimicker, head, fp_te, test_rows, st2["batch_size"], device)
report = accuracy_report(logits, y, n_classes)
log("test accuracy %.4f (n=%d)", report["accuracy"], report["n"])
base = pd.read_parquet(inp.baseline)
base = base[base.split == "testing"]
if len(base) == 1 and int(base.n.iloc[0]) == len(y):  # load_split's subsets are nested
    ref = {k: float(base[k].iloc[0]) for k in ("accuracy", "ci_lo", "ci_hi")}
    ref_source = "baseline cell"
else:  # the fine-tuned head on the cached last layer of the same clips
    last = read_layers(inp.test_cache, [n_layers])[0]
    full = mimic.ClassifierHead.from_model(model)
    ref_logits = mimic.mimic_logits(mimic.no_mimic(dim), full, last, test_rows, 128, device)
    ref = accuracy_report(ref_logits, y, n_classes)
    ref_source = "testing cache"
    del last
log("backbone test accuracy %.4f (%s)", ref["accuracy"], ref_source)

# ---- end to end on raw audio: the mimicked model agrees with the cached path; cost
lat = cell["latency"]
manifest = pd.read_parquet(inp.manifest)
audio, _, paths = load_split(snakemake.params.root, manifest, "testing", lat["batch_size"])
where = {p: i for i, p in enumerate(json.loads(cache_info(inp.test_cache)["metadata"]["paths"]))}
both = [i for i, p in enumerate(paths) if p in where]
mm = mimic.MimickedModel(model, mimicker, head).to(device).eval()
e2e = predict(mm, audio[both], device)
via_cache = mimic.mimic_logits(mimicker, head, fp_te, [where[paths[i]] for i in both], 128, device)
check = {
    "raw_audio_check_clips": len(both),
    "raw_audio_check_max_abs_diff": float(np.abs(e2e - via_cache).max()) if both else np.nan,
    "raw_audio_check_agreement": float((e2e.argmax(1) == via_cache.argmax(1)).mean())
    if both
    else np.nan,
}
log("raw audio vs cache: %s", check)
del fp_te
batch = normalize_audio(torch.from_numpy(audio))
cost = mimic.cost_report(model, mimicker, batch, device, lat["warmup"], lat["repeats"], head)
log("cost %s", {k: v for k, v in cost.items() if k.endswith("_pct") or k.endswith("_ms")})

row = {
    "model": model_name, "kind": kind, "depth": depth, "target_layers": layers,
    "target_source": source, "n_layers": n_layers, "hidden_size": dim,
    **{k: report[k] for k in ("accuracy", "ci_lo", "ci_hi", "n", "per_class_accuracy")},
    "backbone_accuracy": ref["accuracy"], "backbone_ci_lo": ref["ci_lo"],
    "backbone_ci_hi": ref["ci_hi"], "backbone_accuracy_source": ref_source,
    "accuracy_retained": report["accuracy"] / ref["accuracy"] if ref["accuracy"] else np.nan,
    "val_accuracy": val_acc, "train_clips": int(n_tr), "val_clips": len(val_idx), **check,
    "stage1_best_epoch": s1["best_epoch"] if s1 else 0,
    "stage1_best_val_loss": s1["best_val_loss"] if s1 else np.nan,
    "stage1_seconds": s1["seconds"] if s1 else 0.0,
    "stage2_best_epoch": s2["best_epoch"] if s2 else 0,
    "stage2_best_val_accuracy": s2["best_val_accuracy"] if s2 else np.nan,
    "stage2_seconds": s2["seconds"] if s2 else 0.0,
    "freeze_mimicker": freeze_mim, "freeze_head": freeze_head,
    **{k: v for k, v in cost.items() if k != "device"}, "device": str(device),
}  # fmt: skip
meta = ctx.provenance(inputs=dict(inp.items()), seed=cell["seed"])
write_parquet(pd.DataFrame([row]), snakemake.output.cell, meta)

cols = ["stage", "epoch", "train_loss", "val_loss", "val_accuracy", "best"]
df = pd.DataFrame(curves, columns=[*cols, "val_loss_per_target"])
df.insert(0, "model", model_name)
df.insert(1, "kind", kind)
df.insert(2, "depth", depth)
df["val_loss_per_target"] = [v if isinstance(v, list) else [] for v in df.val_loss_per_target]
df["stage"] = df.stage.astype("int64")
df["epoch"] = df.epoch.astype("int64")
df["best"] = df.best.astype(bool)
write_parquet(df, snakemake.output.curves, meta)
