"""The small decoder's word-level tokenizer: one token per word of the command language (both
languages) plus the special and prompt tokens, saved beside the decoder as a
``PreTrainedTokenizerFast`` that ``AutoTokenizer.from_pretrained(folder)`` loads.

A real decoder (``Qwen/Qwen2.5-0.5B``, ...) brings its own tokenizer; every other module only
uses the ``transformers`` tokenizer interface, so both go through the same code. Offline, the
real-size random decoders (:mod:`~workflow_scripts.speechllm.real_decoders`) get a stand-in:
:func:`build_bpe_tokenizer`, a small byte-level BPE with the real special tokens at their real
ids.
"""

from __future__ import annotations

import os

from workflow_scripts.speechllm.text import (
    TASKS,
    english_words,
    german_words,
    language_words,
    target_languages,
)

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
#: Special tokens: padding, unknown, begin/end of sequence, the speech delimiters and one prompt
#: token per task of the shipped decoder (the small decoder's prompts are made of these; a
#: decoder pretrained for more tasks gets one more per task, :func:`specials`).
SPECIALS: tuple[str, ...] = (PAD, UNK, BOS, EOS, "<speech>", "</speech>", "<asr>", "<st>")
#: The tasks the tokenizer covers unless told (the shipped decoder's).
DEFAULT_TASKS = ("asr", "st")


def specials(tasks=DEFAULT_TASKS) -> list[str]:
    """:data:`SPECIALS`, then the prompt token of every other task of ``tasks``."""
    return [*SPECIALS, *(f"<{t}>" for t in TASKS if t in tasks and f"<{t}>" not in SPECIALS)]


def vocabulary(tasks=DEFAULT_TASKS) -> list[str]:
    """Specials, then the English words, then the words of each translation target of
    ``tasks`` (German, Spanish) not already listed. The default tasks give the shipped
    decoder's vocabulary (specials, English, German)."""
    words = specials(tasks)
    langs = [german_words() if lang == "de" else language_words(lang)
             for lang in target_languages(tasks)]  # fmt: skip
    for w in [*english_words(), *(w for ws in langs for w in ws)]:
        if w not in words:
            words.append(w)
    return words


def build_tokenizer(tasks=DEFAULT_TASKS):
    """The word-level ``PreTrainedTokenizerFast`` of ``tasks``' vocabulary
    (:func:`vocabulary`): whitespace-split words, unknown words map to ``<unk>``; no special
    token is added automatically (the prompts write ``<bos>``)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary(tasks))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=PAD, unk_token=UNK, bos_token=BOS, eos_token=EOS,
        additional_special_tokens=specials(tasks)[4:],
    )  # fmt: skip
    tok.padding_side = "right"
    return tok


#: The words of the real decoders' text prompts (config/speechllm-paper.yaml), besides the
#: command language, in the stand-in BPE's training text.
PROMPT_TEXT = "Speech: Transcribe the speech in English: Translate the speech into German:"


def bpe_corpus() -> list[str]:
    """The stand-in BPE's training text: the English words, the German words, the prompts."""
    return [" ".join(english_words()), " ".join(german_words()), PROMPT_TEXT]


def build_bpe_tokenizer(spec: dict):
    """A byte-level BPE ``PreTrainedTokenizerFast`` standing in, offline, for a real LLM's
    tokenizer (``decoders.<hub id>.tokenizer`` of config/architectures.yaml): at most
    ``bpe_vocab`` regular tokens (the 256 byte symbols, then merges learnt from
    :func:`bpe_corpus`: far fewer than a real LLM's), then the ``specials`` at their given
    ids (the real ones, e.g. Qwen2.5's ``<|endoftext|>`` = 151643, beyond the regular tokens);
    ``bos`` / ``eos`` / ``pad`` name special tokens or are null. With a ``bos``, encoding with
    special tokens prepends it (Llama 3); without, nothing is added (Qwen2.5). Ids the
    tokenizer does not know decode to nothing (a real-size LM head scores every id of the
    model's ``vocab_size``)."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    def byte_level(model):
        core = Tokenizer(model)
        core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        core.decoder = decoders.ByteLevel()
        return core

    trained = byte_level(models.BPE())
    trainer = trainers.BpeTrainer(vocab_size=int(spec["bpe_vocab"]), min_frequency=1,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)  # fmt: skip
    trained.train_from_iterator(bpe_corpus(), trainer)
    bpe = json.loads(trained.to_str())["model"]
    vocab = dict(bpe["vocab"])
    special_ids = {str(t): int(i) for t, i in spec["specials"].items()}
    clash = sorted(set(special_ids.values()) & set(vocab.values()))
    if clash:
        raise ValueError(f"special token ids {clash} collide with the {len(vocab)} BPE tokens")
    vocab.update(special_ids)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in bpe["merges"]]
    core = byte_level(models.BPE(vocab=vocab, merges=merges))
    bos = spec.get("bos")
    if bos:
        core.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, special_ids[bos])]
        )
    named = {k: spec.get(k) for k in ("bos", "eos", "pad")}
    extra = [t for t in special_ids if t not in named.values()]
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=named["bos"], eos_token=named["eos"],
        pad_token=named["pad"], additional_special_tokens=extra,
    )  # fmt: skip


def save_tokenizer(tokenizer, folder: str | os.PathLike) -> None:
    tokenizer.save_pretrained(str(folder))


def load_tokenizer(source: str | os.PathLike):
    """The tokenizer of a decoder folder or hub id (``AutoTokenizer``); a tokenizer without a
    padding token pads with its end-of-sequence token."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(source))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok
