"""The small decoder's word-level tokenizer: one token per word of the command language (both
languages) plus the special and prompt tokens, saved beside the decoder as a
``PreTrainedTokenizerFast`` that ``AutoTokenizer.from_pretrained(folder)`` loads.

A real decoder (``Qwen/Qwen2.5-0.5B``, ...) brings its own tokenizer; every other module only
uses the ``transformers`` tokenizer interface, so both go through the same code.
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
