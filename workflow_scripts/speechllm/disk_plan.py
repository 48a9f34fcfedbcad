"""The SpeechLLM stage's disk estimates (the rules' ``disk_mb`` and ``make plan``; estimates,
like :func:`workflow_scripts.backbones.cache_plan.cache_bytes`): speech splits, pretrained
decoders, trained SpeechLLMs, features files."""

from __future__ import annotations

from workflow_scripts.core.paths import RESULTS
from workflow_scripts.speechllm.corpus_plan import corpus_parts
from workflow_scripts.speechllm.plan import section, speech_source, split_utterances

#: Mean seconds of an utterance per reader, with a margin (LibriSpeech train-clean-100: 12.7 s,
#: dev-/test-clean 7.3 s; CoVoST 2 English clips about 5.5 s): the disk estimates.
CORPUS_SECONDS = {"librispeech": 14.0, "covost": 6.5}
#: Mean seconds of a spoken command sentence (2-6 words: about 2 s, docs/speechllm.md), with
#: a margin; the features are 50 frames per second.
SPEECH_SECONDS = 2.5
FRAMES_PER_SECOND = 50


def _speech_seconds(config: dict, split: str) -> tuple[int, float]:
    """(utterances, seconds of speech) of a speech split: :data:`SPEECH_SECONDS` per command
    sentence; made from the corpora, the cap per task at :data:`CORPUS_SECONDS` of its
    reader."""
    n = split_utterances(config, split)
    if speech_source(config) != "corpora":
        return n, n * SPEECH_SECONDS
    readers = [p["reader"] for p in corpus_parts(config, split).values()]
    return n * len(readers), sum(n * CORPUS_SECONDS[r] for r in readers)


def speech_bytes(config: dict, results: str = RESULTS, *, split: str, **_w) -> int:
    """A speech split: 16-bit 16-kHz wav files (:func:`_speech_seconds`), and its manifest (a
    few hundred bytes per utterance)."""
    n, seconds = _speech_seconds(config, split)
    return int(2 * 16_000 * seconds + n * 444 + 100_000)


def decoder_bytes(config: dict, results: str = RESULTS, *, decoder: str, **_w) -> int:
    """A pretrained decoder folder: its weights (``save_dtype``, float16 by default) and
    tokenizer."""
    from workflow_scripts.core.gpu_memory import decoder as dims

    spec = section(config)["decoders"][decoder]["pretrain"]
    per = 2 if spec.get("save_dtype", "float16") == "float16" else 4
    return int(dims(spec)["params"] * per + 2_000_000)


def train_bytes(config: dict, results: str = RESULTS, *, sllm: str, **_w) -> int:
    """A trained SpeechLLM folder: the projector and the decoder's LoRA adapter, float32 (the
    encoder and decoder are referenced, not copied). Its scratch feature file is in $TMPDIR
    on the node, not here (docs/speechllm.md, "On a cluster")."""
    from workflow_scripts.core.gpu_memory import lora_params, speechllm_parts

    s = speechllm_parts(config, sllm)
    inner, dec = s["projector_hidden"], s["decoder"]
    projector = s["encoder"]["hidden"] * s["stack"] * inner + inner * dec["hidden"]
    return int(4 * (projector + lora_params(dec, s["lora"])) + 2_000_000)


def features_bytes(config: dict, results: str = RESULTS, *, sllm: str, split: str,
                   **_w) -> int:  # fmt: skip
    """A features file (``speechllm.features``): float32 frames x the encoder's width of
    every utterance of the split, and their lengths."""
    from workflow_scripts.core.gpu_memory import speechllm_parts

    hidden = speechllm_parts(config, sllm)["encoder"]["hidden"]
    n, seconds = _speech_seconds(config, split)
    return int(seconds * FRAMES_PER_SECOND * hidden * 4 + n * 8 + 100_000)
