"""Peak GPU memory of a job, estimated before it runs (``make plan`` prints it per rule,
``make preflight`` compares it with the site's ``gpu_mem_gb``). Torch-free.

An estimate from the model's size, the batch, the sequence length and the precision, not a
measurement (no GPU has measured these jobs yet; docs/scaling.md). Its parts:

* **weights**: the scripts keep float32 weights (4 bytes per parameter); the backbone jobs
  run under bf16 autocast on CUDA (``backbones.evaluate.autocast``), which adds a bf16 copy of
  the weights a training step uses (2 bytes); the SpeechLLM jobs run in float32;
* **training state** of the trainable parameters: a float32 gradient and AdamW's two moments
  (4 + 8 bytes);
* **activations** kept for the backward pass, per transformer layer
  ``batch x tokens x (34 hidden + 5 heads x tokens)`` bytes at 16 bits (Korthikanti et al.
  2022, "Reducing activation recomputation", without recomputation), twice that in float32;
  the batch is the micro-batch (``finetune.batch_size``; ``finetune.accumulation`` steps of it
  make the effective batch);
* **inference transients**: the hidden states a job keeps (a cache batch keeps all L + 1) and
  the largest layer's working set; the wav2vec2 CNN front end on raw 1-s audio (its first
  layer's output, 512 x 3,199 per clip, in float32, about three copies live);
* **logits** of a decoder (batch x tokens x vocabulary, float32, about three copies for the
  loss), the KV cache of generation;
* a fixed :data:`OVERHEAD` for the CUDA context, cuBLAS/cuDNN workspaces and the caching
  allocator's fragmentation.

The SpeechLLM sequence is ``speech tokens + prompt + text``: :data:`SPEECH_SECONDS_MAX` of
speech at the encoder's 50 frames/s, divided by the projector's ``stack``, a prompt of
:data:`PROMPT_TOKENS` and ``max_new_tokens`` of text.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from workflow_scripts.core.resources import decoder_architectures

GB = 1_000_000_000
#: CUDA context, library workspaces, allocator slack.
OVERHEAD = int(1.0 * GB)
#: The longest utterance the SpeechLLM jobs are sized for (the command sentences: ~2 s).
SPEECH_SECONDS_MAX = 4.0
FRAMES_PER_SECOND = 50
#: Prompt tokens around the speech (the real tokenizers' text prompts: about 15-25).
PROMPT_TOKENS = 32
#: Text tokens of a command sentence when a job does not say (``max_new_tokens`` otherwise).
TEXT_TOKENS = 24
#: Samples of a 1-s clip: the input of the backbones' CNN front end.
CLIP_SAMPLES = 16_000
#: The public config.json of the hub decoders config/speechllm-paper.yaml names (the
#: ``decoders`` section of config/architectures.yaml; used when the checkpoint is not in the
#: local Hugging Face cache to read).
KNOWN_DECODERS = {hub: e["config"] for hub, e in decoder_architectures().items()}
#: GPU rules (profiles/slurm: one GPU each).
GPU_RULES = (
    "pretrain_backbone",
    "finetune",
    "hidden_cache",
    "pruning_cell",
    "mimic_cell",
    "structured_cell",
    "speechllm_decoder",
    "speechllm_train",
    "speechllm_features",
    "speechllm_similarity",
    "speechllm_pruning",
    "speechllm_heal",
)


# ----------------------------------------------------------------------------------------
# The parts
# ----------------------------------------------------------------------------------------
def activation_bytes(
    batch: int, tokens: int, hidden: int, heads: int, layers: int, bytes_per: int = 2
) -> int:
    """Activations a training step keeps for the backward pass (Korthikanti et al. 2022):
    ``layers x batch x tokens x (34 hidden + 5 heads x tokens)`` at 16 bits."""
    per_layer = batch * tokens * (34 * hidden + 5 * heads * tokens)
    return int(layers * per_layer * bytes_per / 2)


def layer_transient_bytes(
    batch: int, tokens: int, hidden: int, heads: int, ffn: int, bytes_per: int = 4
) -> int:
    """The working set of one layer's forward pass without gradients: its input, the
    attention scores (float32) and the feed-forward's inner activation."""
    return int(batch * tokens * (3 * hidden + ffn) * bytes_per + batch * heads * tokens**2 * 4)


def training_state_bytes(trainable: int) -> int:
    """Float32 gradient + AdamW's two moments per trainable parameter."""
    return 12 * trainable


def cnn_bytes(batch: int, channels: int, frames: int, training: bool = False) -> int:
    """The CNN front end on raw audio: its first layer's output (``channels x frames`` per
    clip, float32), about three copies live (input, output, norm); the whole stack's outputs
    are kept when it trains."""
    return int((6 if training else 3) * batch * channels * frames * 4)


# ----------------------------------------------------------------------------------------
# Models' sizes
# ----------------------------------------------------------------------------------------
def backbone(spec: dict) -> dict:
    """layers, hidden, heads, ffn, frames, params, the CNN's parameters and its first
    layer's channels and frames, of a model registry entry (``core.sizes.model_dims``)."""
    from workflow_scripts.core import resources, sizes
    from workflow_scripts.core.config import model_config

    cfg = model_config(spec) or {}
    if not cfg and "hf" in spec:
        arch = resources.hub_architectures().get(str(spec["hf"]))
        cfg = dict(arch["config"]) if arch else {}
    dims = sizes.model_dims(spec)
    conv = resources.SMALL_CONV if "pretrain" in spec else resources.REAL_CONV
    conv_dim = list(cfg.get("conv_dim") or conv["conv_dim"])
    kernel = list(cfg.get("conv_kernel") or conv["conv_kernel"])
    stride = list(cfg.get("conv_stride") or conv.get("conv_stride", (5, 2, 2, 2, 2, 2, 2)))
    cnn, c_in = 0, 1
    for c_out, k in zip(conv_dim, kernel, strict=False):
        cnn += c_in * c_out * k
        c_in = c_out
    hidden = dims["hidden"]
    return {
        **dims,
        "heads": int(cfg.get("num_attention_heads") or max(1, hidden // 64)),
        "ffn": int(cfg.get("intermediate_size") or 4 * hidden),
        "cnn_params": cnn,
        "cnn_channels": conv_dim[0],
        "cnn_frames": (CLIP_SAMPLES - kernel[0]) // stride[0] + 1,
        "conv_out": conv_dim[-1],
    }


def _hub_file(hub_id: str, name: str) -> Path | None:
    """A file of a hub checkpoint in the local Hugging Face cache, if any."""
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    repo = home / "hub" / ("models--" + hub_id.replace("/", "--"))
    hits = sorted(repo.glob(f"snapshots/*/{name}"))
    return hits[-1] if hits else None


def decoder(source: str | dict) -> dict:
    """layers, hidden, heads, kv_heads, ffn, vocab and params of a decoder: a ``pretrain``
    spec (a dict), a local folder's or the HF cache's ``config.json``, the public configs of
    :data:`KNOWN_DECODERS`, else a 1B Llama."""
    if isinstance(source, dict):
        p = source
        cfg = {
            "num_hidden_layers": p["layers"],
            "hidden_size": p["hidden"],
            "num_attention_heads": p["heads"],
            "num_key_value_heads": p.get("kv_heads"),
            "intermediate_size": p.get("ffn"),
            "vocab_size": 512,
        }
    else:
        local = Path(str(source)) / "config.json"
        cached = None if local.is_file() else _hub_file(str(source), "config.json")
        if local.is_file() or cached:
            cfg = json.loads((local if local.is_file() else cached).read_text())
        else:
            cfg = KNOWN_DECODERS.get(str(source), KNOWN_DECODERS["meta-llama/Llama-3.2-1B"])
    layers, hidden = int(cfg["num_hidden_layers"]), int(cfg["hidden_size"])
    heads = int(cfg.get("num_attention_heads") or max(1, hidden // 64))
    kv = int(cfg.get("num_key_value_heads") or heads)
    ffn = int(cfg.get("intermediate_size") or 4 * hidden)
    vocab = int(cfg.get("vocab_size") or 32_000)
    head_dim = hidden // heads
    block = 2 * hidden * hidden + 2 * hidden * kv * head_dim + 3 * hidden * ffn + 2 * hidden
    embed = vocab * hidden * (1 if cfg.get("tie_word_embeddings", True) else 2)
    return {
        "layers": layers,
        "hidden": hidden,
        "heads": heads,
        "kv_heads": kv,
        "ffn": ffn,
        "vocab": vocab,
        "head_dim": head_dim,
        "params": layers * block + embed + hidden,
    }


def speechllm_parts(config: dict, sllm: str) -> dict:
    """A SpeechLLM's parts: its encoder (backbone dims), decoder (decoder dims), projector
    stack and LoRA, from its ``train`` spec or its folder's ``config.json``."""
    from workflow_scripts.speechllm import plan as sp
    from workflow_scripts.speechllm.settings import resolve_train

    spec = sp.section(config)["models"][sllm]
    if "train" in spec:
        t = resolve_train(spec["train"])
        enc_ref, dec_ref = t["encoder"], t["decoder"]
        enc_src = sp.encoder_source(config, enc_ref)
        dec_spec = (sp.section(config).get("decoders") or {}).get(dec_ref) or {}
        dec = decoder(
            dec_spec["pretrain"] if "pretrain" in dec_spec else sp.decoder_source(config, dec_ref)
        )
        stack, lora, inner = t["projector"]["stack"], t["lora"], t["projector"]["hidden"]
    else:
        folder = Path(spec["hf"])
        cfg_file = folder / "config.json"
        cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}

        def resolve(ref):
            p = folder / str(ref)
            return str(p) if p.exists() else str(ref)

        enc_src = resolve(cfg.get("encoder", "facebook/hubert-base-ls960"))
        dec = decoder(resolve(cfg.get("decoder", "meta-llama/Llama-3.2-1B")))
        stack = (cfg.get("projector") or {}).get("stack", 4)
        inner = (cfg.get("projector") or {}).get("hidden", 512)
        lora = cfg.get("lora") or {"r": 8, "targets": ["q_proj", "v_proj"]}
    models = config.get("models") or {}
    enc_spec = models.get(enc_src) or {"hf": enc_src}
    return {
        "encoder": backbone(enc_spec),
        "decoder": dec,
        "stack": int(stack),
        "projector_hidden": int(inner),
        "lora": lora,
    }


def lora_params(dec: dict, lora: dict | None) -> int:
    if not lora:
        return 0
    r = int(lora.get("r", 8))
    per = {
        "q_proj": 2 * dec["hidden"],
        "o_proj": 2 * dec["hidden"],
        "k_proj": dec["hidden"] + dec["kv_heads"] * dec["head_dim"],
        "v_proj": dec["hidden"] + dec["kv_heads"] * dec["head_dim"],
        "gate_proj": dec["hidden"] + dec["ffn"],
        "up_proj": dec["hidden"] + dec["ffn"],
        "down_proj": dec["hidden"] + dec["ffn"],
    }
    return dec["layers"] * r * sum(per.get(t, 2 * dec["hidden"]) for t in lora.get("targets", []))


def _sequence(stack: int, text_tokens: int) -> int:
    speech = math.ceil(SPEECH_SECONDS_MAX * FRAMES_PER_SECOND / max(1, stack))
    return speech + PROMPT_TOKENS + text_tokens


def _decoder_training(dec: dict, batch: int, tokens: int, trainable: int) -> int:
    """A frozen float32 decoder with ``trainable`` adapter/projector parameters, one step."""
    return (
        4 * dec["params"]
        + training_state_bytes(trainable)
        + activation_bytes(batch, tokens, dec["hidden"], dec["heads"], dec["layers"], 4)
        + 3 * batch * tokens * dec["vocab"] * 4
    )


# ----------------------------------------------------------------------------------------
# Per rule
# ----------------------------------------------------------------------------------------
def _finetune(config: dict, model: str) -> int:
    from workflow_scripts.backbones import plan as bp

    spec = config["models"][model]
    m = backbone(spec)
    ft = bp.resolve_finetune(config.get("finetune"), spec.get("finetune"))
    batch = int(ft["batch_size"])  # the micro-batch: accumulation steps add no memory
    frozen = ft.get("freeze_feature_encoder", True)
    trainable = m["params"] - (m["cnn_params"] if frozen else 0)
    cached = frozen and ft.get("cache_features", True)
    front = (
        batch * m["conv_out"] * m["frames"] * 4
        if cached
        else cnn_bytes(batch, m["cnn_channels"], m["cnn_frames"], training=not frozen)
    )
    return (
        6 * m["params"]
        + training_state_bytes(trainable)
        + front
        + activation_bytes(batch, m["frames"], m["hidden"], m["heads"], m["layers"])
    )


def _inference(m: dict, batch: int, keep_states: int = 1, raw_audio: bool = True) -> int:
    """A backbone's forward pass without gradients (bf16 autocast), keeping ``keep_states``
    hidden states of the batch."""
    front = cnn_bytes(batch, m["cnn_channels"], m["cnn_frames"]) if raw_audio else 0
    states = keep_states * batch * m["frames"] * m["hidden"] * 4
    layer = layer_transient_bytes(batch, m["frames"], m["hidden"], m["heads"], m["ffn"])
    return 6 * m["params"] + front + states + layer


def _hidden_cache(config: dict, model: str) -> int:
    m = backbone(config["models"][model])
    return _inference(m, int(config["cache"]["batch_size"]), keep_states=m["layers"] + 2)


def _pruning(config: dict, model: str) -> int:
    m = backbone(config["models"][model])
    p = config.get("pruning") or {}
    batch = max(int(p.get("batch_size", 128)), int((p.get("latency") or {}).get("batch_size", 16)))
    peak = _inference(m, batch)
    heal = p.get("heal") or {}
    if heal.get("n"):
        hb = int(heal.get("batch_size", 32))
        peak = max(
            peak,
            6 * m["params"]
            + cnn_bytes(hb, m["cnn_channels"], m["cnn_frames"])
            + activation_bytes(hb, m["frames"], m["hidden"], m["heads"], m["layers"]),
        )
    return peak


def _mimic(config: dict, model: str, kind: str = "transformer") -> int:
    m = backbone(config["models"][model])
    mc = config.get("mimic") or {}
    latency = int((mc.get("latency") or {}).get("batch_size", 32))
    train_batch = max(int((mc.get(s) or {}).get("batch_size", 128)) for s in ("stage1", "stage2"))
    # the mimicker (one or two layers of width D) trains on cached float16 states
    depth = 2
    train = (
        activation_bytes(train_batch, m["frames"], m["hidden"], m["heads"], depth)
        + 2 * train_batch * m["frames"] * m["hidden"] * 4
        + 6 * m["params"]
    )
    return max(_inference(m, latency), train)


def _structured(config: dict, model: str) -> int:
    m = backbone(config["models"][model])
    s = config.get("structured") or {}
    batch = int(s.get("batch_size", 4))
    trainable = m["params"] - m["cnn_params"]
    train = (
        6 * m["params"]
        + training_state_bytes(trainable)
        + activation_bytes(batch, m["frames"], m["hidden"], m["heads"], m["layers"])
    )
    from workflow_scripts.structured.plan import teacher_computed

    if teacher_computed(s):
        # the frozen teacher blocks (float32) and one layer's forward pass of the batch
        train += 4 * trainable + layer_transient_bytes(
            batch, m["frames"], m["hidden"], m["heads"], m["ffn"]
        )
    evaluation = max(
        int(s.get("eval_batch_size", 128)), int((s.get("latency") or {}).get("batch_size", 16))
    )
    return max(train, _inference(m, evaluation) + 4 * m["params"])  # + the unpruned copy


def _pretrain(config: dict, model: str) -> int:
    spec = config["models"][model]
    m = backbone(spec)
    batch = int(spec["pretrain"].get("batch_size", 32))
    return (
        6 * m["params"]
        + training_state_bytes(m["params"])
        + cnn_bytes(batch, m["cnn_channels"], m["cnn_frames"], training=True)
        + activation_bytes(batch, m["frames"], m["hidden"], m["heads"], m["layers"])
    )


def _speechllm_decoder(config: dict, decoder_name: str) -> int:
    from workflow_scripts.speechllm import plan as sp

    p = sp.section(config)["decoders"][decoder_name]["pretrain"]
    dec = decoder(p)
    batch = int(p.get("batch_size", 64))
    return (
        4 * dec["params"]
        + training_state_bytes(dec["params"])
        + activation_bytes(batch, TEXT_TOKENS, dec["hidden"], dec["heads"], dec["layers"], 4)
        + 3 * batch * TEXT_TOKENS * dec["vocab"] * 4
    )


def _speechllm_train(config: dict, sllm: str) -> int:
    from workflow_scripts.speechllm.settings import resolve_train

    s = speechllm_parts(config, sllm)
    t = resolve_train((config["speechllm"]["models"][sllm]).get("train") or {})
    dec, enc = s["decoder"], s["encoder"]
    tokens = _sequence(s["stack"], int(config["speechllm"].get("max_new_tokens", TEXT_TOKENS)))
    inner = s["projector_hidden"]
    projector = enc["hidden"] * s["stack"] * inner + inner * dec["hidden"]
    trainable = projector + lora_params(dec, s["lora"])
    return 4 * enc["params"] + _decoder_training(dec, int(t["batch_size"]), tokens, trainable)


def _speechllm_features(config: dict, sllm: str) -> int:
    enc = speechllm_parts(config, sllm)["encoder"]
    frames = int(SPEECH_SECONDS_MAX * FRAMES_PER_SECOND)
    return (
        4 * enc["params"]
        + enc["layers"] * frames * enc["hidden"] * 4
        + layer_transient_bytes(1, frames, enc["hidden"], enc["heads"], enc["ffn"])
        + cnn_bytes(1, enc["cnn_channels"], int(enc["cnn_frames"] * SPEECH_SECONDS_MAX))
    )


def _speechllm_cell(config: dict, sllm: str, pruning: bool) -> int:
    s = speechllm_parts(config, sllm)
    sec = config["speechllm"]
    dec = s["decoder"]
    batch = int(sec.get("batch_size", 64))
    text = int(sec.get("max_new_tokens", TEXT_TOKENS))
    tokens = _sequence(s["stack"], text)
    states = (dec["layers"] + 1) * batch * tokens * dec["hidden"] * 4
    forward = (
        4 * dec["params"]
        + states
        + batch * tokens * dec["vocab"] * 4
        + layer_transient_bytes(batch, tokens, dec["hidden"], dec["heads"], dec["ffn"])
    )
    if not pruning:
        return forward
    kv = 2 * dec["layers"] * batch * (tokens + text) * dec["kv_heads"] * dec["head_dim"] * 4
    peak = max(forward, 4 * dec["params"] + kv + batch * tokens * dec["vocab"] * 4)
    heal = (sec.get("pruning") or {}).get("heal") or {}
    if heal.get("n"):
        lora = {"r": heal.get("r", 8), "targets": heal.get("targets", ["q_proj", "v_proj"])}
        hb = int(heal.get("batch_size", 16))
        peak = max(peak, _decoder_training(dec, hb, tokens, lora_params(dec, lora)))
    return peak


def estimate(config: dict, rule: str, wildcards: dict[str, str]) -> int | None:
    """Estimated peak GPU memory (bytes) of one job of ``rule`` with ``wildcards``; None for
    a CPU rule."""
    w = wildcards
    per_rule = {
        "pretrain_backbone": lambda: _pretrain(config, w["model"]),
        "finetune": lambda: _finetune(config, w["model"]),
        "hidden_cache": lambda: _hidden_cache(config, w["model"]),
        "pruning_cell": lambda: _pruning(config, w["model"]),
        "mimic_cell": lambda: _mimic(config, w["model"], w.get("kind", "transformer")),
        "structured_cell": lambda: _structured(config, w["model"]),
        "speechllm_decoder": lambda: _speechllm_decoder(config, w["decoder"]),
        "speechllm_train": lambda: _speechllm_train(config, w["sllm"]),
        "speechllm_features": lambda: _speechllm_features(config, w["sllm"]),
        "speechllm_similarity": lambda: _speechllm_cell(config, w["sllm"], pruning=False),
        "speechllm_pruning": lambda: _speechllm_cell(config, w["sllm"], pruning=True),
        "speechllm_heal": lambda: _speechllm_cell(config, w["sllm"], pruning=True),
    }
    if rule not in per_rule:
        return None
    return OVERHEAD + int(per_rule[rule]())
