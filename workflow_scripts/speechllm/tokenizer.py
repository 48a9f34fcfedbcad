"""The small decoder's word-level tokenizer: one token per word of the command language (both
languages) plus the special and prompt tokens, saved beside the decoder as a
``PreTrainedTokenizerFast`` that ``AutoTokenizer.from_pretrained(folder)`` loads.

A real decoder (``Qwen/Qwen2.5-0.5B``, ...) brings its own tokenizer; every other module only
uses the ``transformers`` tokenizer interface, so both go through the same code.
"""

from __future__ import annotations

import os

from workflow_scripts.speechllm.text import english_words, german_words

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
#: Special tokens: padding, unknown, begin/end of sequence, the speech delimiters and one prompt
#: token per task (the small decoder's prompts are made of these).
SPECIALS: tuple[str, ...] = (PAD, UNK, BOS, EOS, "<speech>", "</speech>", "<asr>", "<st>")


def vocabulary() -> list[str]:
    """Specials, then the English words, then the German words not already listed."""
    words = list(SPECIALS)
    for w in [*english_words(), *german_words()]:
        if w not in words:
            words.append(w)
    return words


def build_tokenizer():
    """The word-level ``PreTrainedTokenizerFast``: whitespace-split words, unknown words map to
    ``<unk>``; no special token is added automatically (the prompts write ``<bos>``)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary())}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=PAD, unk_token=UNK, bos_token=BOS, eos_token=EOS,
        additional_special_tokens=list(SPECIALS[4:]),
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
