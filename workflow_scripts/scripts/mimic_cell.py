"""Rule adapter: one mimic cell (model x mimicker type x depth), trained from the caches.

Stage 1 (MSE to the teacher states) and stage 2 (NLL through the fine-tuned head) read only the
cached feature projections and hidden states: fit on the training-split cache, best epoch by
the validation-split cache. The test evaluation runs the mimicked model on raw test audio.
"""

import numpy as np
import pandas as pd
import torch

from workflow_scripts import mimic
from workflow_scripts.backbones import load_classifier, normalize_audio, pick_device
from workflow_scripts.cache import cache_info, read_array, read_layers
from workflow_scripts.data import load_split
from workflow_scripts.finetune import accuracy_report, predict
from workflow_scripts.mimic_cells import NO_MIMIC, target_layers
from workflow_scripts.provenance import write_parquet
from workflow_scripts.scripts._common import RuleContext

ctx = RuleContext(snakemake)
torch.set_num_threads(snakemake.threads)
cell, inp = ctx.cell, snakemake.input
kind, depth, model_name = cell["kind"], cell["depth"], cell["model"]
log = ctx.log.info
device = pick_device()

model = load_classifier(inp.model).eval()
n_layers, dim = model.config.num_hidden_layers, model.config.hidden_size
n_classes = model.config.num_labels

# ---- targets and cached data (no backbone forward pass from here to the test evaluation)
blocks = pd.read_csv(inp.blocks) if "blocks" in inp.keys() else None
if kind == NO_MIMIC:
    layers, source = [], "none"
else:
    layers, source = target_layers(depth, n_layers, model_name, cell.get("targets"), blocks)
log("target layers %s (%s)", layers, source)
shas = {cache_info(p)["metadata"].get("model_sha256") for p in (inp.train_cache, inp.val_cache)}
if len(shas) != 1:
    raise ValueError("the training and validation caches come from different models")
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
s2 = None
if st2["epochs"] > 0 and not (freeze_mim and freeze_head):
    s2 = mimic.train_stage2(mimicker, head, fp, labels, train_idx, val_idx, st2["epochs"],
                            st2["lr"], st2["batch_size"], device, freeze_mim, freeze_head, log,
                            cell["seed"])  # fmt: skip
    curves += [{"stage": 2, **h, "best": h["epoch"] == s2["best_epoch"]} for h in s2["history"]]
else:
    log("stage 2 skipped (epochs 0, or mimicker and head both frozen)")
val_logits = mimic.mimic_logits(mimicker, head, fp, val_idx, st2["batch_size"], device)
val_acc = float((val_logits.argmax(1) == labels[val_idx]).mean())
del fp

# ---- test accuracy on raw audio, vs the unpruned backbone on the same clips
manifest = pd.read_parquet(inp.manifest)
audio, y, _ = load_split(snakemake.params.root, manifest, "testing", cell["test_clips"])
mm = mimic.MimickedModel(model, mimicker, head).to(device).eval()
report = accuracy_report(predict(mm, audio, device), y, n_classes)
log("test accuracy %.4f (n=%d)", report["accuracy"], report["n"])
base = pd.read_parquet(inp.baseline)
base = base[base.split == "testing"]
if len(base) == 1 and int(base.n.iloc[0]) == len(y):  # load_split's subset is a fixed prefix
    ref = {k: float(base[k].iloc[0]) for k in ("accuracy", "ci_lo", "ci_hi")}
    ref_source = "baseline cell"
else:
    ref = accuracy_report(predict(model.to(device), audio, device), y, n_classes)
    ref_source = "recomputed"
log("backbone test accuracy %.4f (%s)", ref["accuracy"], ref_source)

# ---- parameters and latency
lat = cell["latency"]
batch = normalize_audio(torch.from_numpy(audio[: lat["batch_size"]]))
cost = mimic.cost_report(model, mimicker, batch, device, lat["warmup"], lat["repeats"], head)
log("cost %s", {k: v for k, v in cost.items() if k.endswith("_pct") or k.endswith("_ms")})

row = {
    "model": model_name, "kind": kind, "depth": depth, "target_layers": layers,
    "target_source": source, "n_layers": n_layers, "hidden_size": dim,
    **{k: report[k] for k in ("accuracy", "ci_lo", "ci_hi", "n", "per_class_accuracy")},
    "backbone_accuracy": ref["accuracy"], "backbone_ci_lo": ref["ci_lo"],
    "backbone_ci_hi": ref["ci_hi"], "backbone_accuracy_source": ref_source,
    "accuracy_retained": report["accuracy"] / ref["accuracy"] if ref["accuracy"] else np.nan,
    "val_accuracy": val_acc, "train_clips": int(n_tr), "val_clips": len(val_idx),
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
