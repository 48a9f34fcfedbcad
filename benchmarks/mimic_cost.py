"""Cost of mimicking networks vs the transformer stack they replace (random weights).

For a wav2vec2-base-sized and a WavLM-large-sized classifier (real front end: seven conv
layers of 512 channels, kernels (10,3,3,3,3,2,2), strides (5,2,2,2,2,2,2); 35 classes), and
for 1- and 2-layer linear and transformer mimickers, prints parameter and latency reductions
of (a) the mimicker vs the replaced stack and (b) the mimicked model vs the whole model, next
to the paper's claims (95-98% fewer parameters, up to 94% less inference time).

Latency: median of ``--repeats`` timed calls after ``--warmup`` untimed ones
(``workflow_scripts.core.timing.measure_latency``; CUDA events on GPU), one batch of
``--batch-size`` clips of ``--seconds`` s. Example:

    .venv/bin/python benchmarks/mimic_cost.py --batch-size 4 --repeats 3 --warmup 1
    .venv/bin/python benchmarks/mimic_cost.py --device cuda --batch-size 128 --warmup 100 --amp
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workflow_scripts.backbones.registry import pick_device, small_config  # noqa: E402
from workflow_scripts.mimic.cost import cost_report  # noqa: E402
from workflow_scripts.mimic.model import Mimicker  # noqa: E402

FRONT_END = dict(
    conv_dim=(512,) * 7,
    conv_kernel=(10, 3, 3, 3, 3, 2, 2),
    conv_stride=(5, 2, 2, 2, 2, 2, 2),
    pos_conv_kernel=128,
    pos_conv_groups=16,
    classifier_proj=256,
)
ARCHS = {
    "wav2vec2-base": ("wav2vec2", dict(hidden=768, layers=12, heads=12, ffn=3072)),
    "wavlm-large": ("wavlm", dict(hidden=1024, layers=24, heads=16, ffn=4096)),
}
PAPER = "paper: 95-98% fewer parameters (whole network), up to 94% less inference time"


def build(name: str):
    from transformers import AutoModelForAudioClassification

    arch, spec = ARCHS[name]
    cfg = small_config(arch, {**spec, **FRONT_END})
    cfg.num_labels = 35
    cfg.conv_bias = False
    if name == "wav2vec2-base":
        cfg.feat_extract_norm = "group"
    else:
        cfg.feat_extract_norm = "layer"
        cfg.do_stable_layer_norm = True
        cfg.num_buckets, cfg.max_bucket_distance = 320, 800
    torch.manual_seed(0)
    return AutoModelForAudioClassification.from_config(cfg).eval()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=1.0, help="clip length (1 s = 49 frames)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA only)")
    ap.add_argument("--width", type=int, default=64, help="linear mimic layer width h")
    ap.add_argument("--ffn", type=int, default=None, help="transformer mimic FFN (default width)")
    ap.add_argument("--json", type=Path, default=None, help="write all reports here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    kinds = [("linear", 1), ("linear", 2), ("transformer", 1), ("transformer", 2)]
    rows = []
    t0 = time.time()
    for name in args.archs:
        model = build(name)
        dim = model.config.hidden_size
        audio = torch.randn(args.batch_size, int(16000 * args.seconds))
        audio = (audio - audio.mean(1, keepdim=True)) / audio.std(1, keepdim=True)
        for kind, depth in kinds:
            torch.manual_seed(0)
            mim = Mimicker(kind, depth, dim, width=args.width, ffn=args.ffn)
            precision = "bf16" if args.amp else "fp32"
            rep = cost_report(model, mim, audio, device, args.warmup, args.repeats,
                              precision=precision)  # fmt: skip
            rows.append({"arch": name, "kind": kind, "depth": depth, **rep})
        del model
    print(
        f"device {device}, batch {args.batch_size} x {args.seconds:g} s, "
        f"warmup {args.warmup}, repeats {args.repeats}, amp {args.amp}, "
        f"threads {torch.get_num_threads()}, {time.time() - t0:.0f} s"
    )
    hdr = (
        f"{'arch':14s} {'mimicker':14s} {'params':>8s} {'stack':>8s} {'-par%':>6s} "
        f"{'model':>8s} {'mimicked':>8s} {'-par%':>6s} | {'stack ms':>9s} {'mim ms':>8s} "
        f"{'-lat%':>6s} | {'model ms':>9s} {'mimd ms':>8s} {'-lat%':>6s}"
    )
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(
            f"{r['arch']:14s} {r['kind'] + ' x' + str(r['depth']):14s} "
            f"{r['mimicker_params'] / 1e6:7.2f}M {r['stack_params'] / 1e6:7.1f}M "
            f"{r['stack_param_reduction_pct']:6.1f} "
            f"{r['model_params'] / 1e6:7.1f}M {r['mimicked_model_params'] / 1e6:7.2f}M "
            f"{r['model_param_reduction_pct']:6.1f} | "
            f"{r['stack_ms']:9.2f} {r['mimicker_ms']:8.2f} {r['stack_latency_reduction_pct']:6.1f}"
            f" | {r['model_ms']:9.2f} {r['mimicked_model_ms']:8.2f} "
            f"{r['model_latency_reduction_pct']:6.1f}"
        )
    par = [r["model_param_reduction_pct"] for r in rows]
    lat = [r["model_latency_reduction_pct"] for r in rows]
    print(PAPER)
    print(
        f"here:  {min(par):.1f}-{max(par):.1f}% fewer parameters (whole network), "
        f"{min(lat):.1f}-{max(lat):.1f}% less inference time (whole network, this device)"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
