"""The command language of the SpeechLLM stage: sentences of 2-6 words over the 35 Speech
Commands keywords plus a few grammar words, held-out sentence sets, and the speech-translation
stand-in (English -> German from a fixed bilingual word list).

A sentence is drawn by picking one of :data:`TEMPLATES` uniformly and filling its slots from
the word classes (:data:`CLASSES`); every keyword is in some class. The held-out sentences
(:func:`heldout_sets`: a share of each template, distinct for validation and testing) are a pure
function of the text config; training sentences are drawn from the same templates with every
held-out sentence excluded (:class:`Sentences`), so no held-out sentence is ever trained on,
neither by the decoder's text pretraining nor by the SpeechLLM.

The translation is word by word from :data:`GERMAN`, with two rules that make it more than a
substitution: the article ``the`` takes the gender of its noun (der / die / das), and the
separable verb ``turn on|off X`` puts its particle last (``schalte X an|aus``). Torch-free.
"""

from __future__ import annotations

import numpy as np

from workflow_scripts.data.corpus import SPEECH_COMMANDS_WORDS

#: Word classes of the grammar: every Speech Commands keyword is in exactly one.
CLASSES: dict[str, tuple[str, ...]] = {
    "NAME": ("marvin", "sheila"),
    "THING": ("bird", "cat", "dog", "bed", "house", "tree"),
    "DIR": ("up", "down", "left", "right", "forward", "backward"),
    "NUM": ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"),
    "COUNT": ("two", "three", "four", "five", "six", "seven", "eight", "nine"),
    "SWITCH": ("on", "off"),
    "EXCL": ("yes", "no", "wow"),
    "ADJ": ("happy", "visual"),
    "VERB": ("go", "follow", "learn", "stop"),
}
#: The grammar words besides the keywords.
GRAMMAR_WORDS: tuple[str, ...] = ("the", "and", "then", "turn", "is", "steps", "please")

#: Templates: slots are class names, ``NAME?`` an optional slot, other tokens literal words.
TEMPLATES: tuple[str, ...] = (
    "NAME? go DIR",
    "NAME? go DIR COUNT steps",
    "NAME? follow the THING",
    "turn SWITCH the THING",
    "the THING is ADJ",
    "EXCL NAME? stop",
    "NUM NUM NUM",
    "NUM NUM NUM NUM",
    "NAME? learn NUM",
    "go DIR then go DIR",
    "please NAME? go DIR",
    "please follow the THING",
    "EXCL the THING is ADJ",
    "NAME and NAME go DIR",
    "stop and go DIR",
)

#: The bilingual word list (English -> German) of the translation task.
GERMAN: dict[str, str] = {
    "backward": "rückwärts", "bed": "bett", "bird": "vogel", "cat": "katze", "dog": "hund",
    "down": "runter", "eight": "acht", "five": "fünf", "follow": "folge", "forward": "vorwärts",
    "four": "vier", "go": "geh", "happy": "froh", "house": "haus", "learn": "lerne",
    "left": "links", "marvin": "marvin", "nine": "neun", "no": "nein", "off": "aus", "on": "an",
    "one": "eins", "right": "rechts", "seven": "sieben", "sheila": "sheila", "six": "sechs",
    "stop": "halt", "three": "drei", "tree": "baum", "two": "zwei", "up": "hoch",
    "visual": "visuell", "wow": "wow", "yes": "ja", "zero": "null",
    "and": "und", "then": "dann", "turn": "schalte", "is": "ist", "steps": "schritte",
    "please": "bitte",
}  # fmt: skip
#: The article ``the`` by the gender of the noun that follows it.
ARTICLES: dict[str, str] = {"bird": "der", "dog": "der", "tree": "der", "cat": "die",
                            "bed": "das", "house": "das"}  # fmt: skip
TASKS: tuple[str, ...] = ("asr", "st")
SPLITS: tuple[str, ...] = ("training", "validation", "testing")


def english_words() -> list[str]:
    """The English vocabulary: the 35 keywords and the grammar words."""
    return [*SPEECH_COMMANDS_WORDS, *GRAMMAR_WORDS]


def german_words() -> list[str]:
    """The German vocabulary: every translation and article, sorted."""
    return sorted(set(GERMAN.values()) | set(ARTICLES.values()))


def translate(sentence: str) -> str:
    """The German of an English command sentence (see the module docstring)."""
    words = sentence.split()
    out: list[str] = []
    particle = None
    for i, w in enumerate(words):
        if w == "turn" and i + 1 < len(words) and words[i + 1] in ("on", "off"):
            particle = GERMAN[words[i + 1]]
            out.append(GERMAN[w])
            continue
        if particle is not None and i > 0 and words[i - 1] == "turn" and w in ("on", "off"):
            continue
        if w == "the":
            nxt = words[i + 1] if i + 1 < len(words) else ""
            out.append(ARTICLES.get(nxt, "die"))
            continue
        if w not in GERMAN:
            raise ValueError(f"no translation of {w!r} in {sentence!r}")
        out.append(GERMAN[w])
    if particle is not None:
        out.append(particle)
    return " ".join(out)


def normalize(text: str) -> str:
    """The one normalisation of references and hypotheses before scoring: Unicode NFKC,
    lowercase, every punctuation character (Unicode category P*) replaced by a space,
    whitespace collapsed to single spaces and stripped. Numbers are kept as written: digits
    stay digits and number words stay words (no conversion between them), so "3" and "three"
    differ; letters with diacritics (ü, ß) are kept."""
    import unicodedata

    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if unicodedata.category(c).startswith("P") else c for c in text)
    return " ".join(text.split())


def sentence_id(sentence: str) -> str:
    """A stable id of a sentence: the first 12 hex digits of the SHA-256 of its normalised
    text (utterances saying the same sentence share it; the bootstrap resamples these)."""
    import hashlib

    return hashlib.sha256(normalize(sentence).encode()).hexdigest()[:12]


def target_text(sentence: str, task: str) -> str:
    """What a SpeechLLM should write for ``task``: the transcript (``asr``) or its German
    translation (``st``)."""
    if task == "asr":
        return sentence
    if task == "st":
        return translate(sentence)
    raise ValueError(f"unknown task {task!r}; tasks: {list(TASKS)}")


def template_size(template: str) -> int:
    """How many distinct sentences ``template`` gives (an optional slot adds one: empty)."""
    n = 1
    for token in template.split():
        name = token.rstrip("?")
        if name in CLASSES:
            n *= len(CLASSES[name]) + token.endswith("?")
    return n


def fill(template: str, rng: np.random.Generator) -> str:
    """``template`` with its slots filled uniformly (an optional slot is left out with
    probability 1/(size + 1), so that every sentence of the template is equally likely)."""
    words = []
    for token in template.split():
        name = token.rstrip("?")
        if name not in CLASSES:
            words.append(name)
            continue
        choices = CLASSES[name]
        k = int(rng.integers(len(choices) + token.endswith("?")))
        if k < len(choices):
            words.append(choices[k])
    return " ".join(words)


def heldout_sets(seed: int, share: float, max_per_template: int) -> dict[str, dict[int, list[str]]]:
    """The held-out sentences: per split (validation, testing) and template index, distinct
    sentences, ``max(1, min(max_per_template, floor(share * size)))`` of each template, never
    in both splits. A pure function of the arguments."""
    rng = np.random.default_rng([seed, 31])
    out: dict[str, dict[int, list[str]]] = {"validation": {}, "testing": {}}
    seen: set[str] = set()
    for t, template in enumerate(TEMPLATES):
        k = max(1, min(max_per_template, int(share * template_size(template))))
        if 2 * k >= template_size(template):
            raise ValueError(f"template {template!r} is too small to hold out {k} sentences twice")
        for split in ("validation", "testing"):
            chosen: list[str] = []
            while len(chosen) < k:
                s = fill(template, rng)
                if s not in seen:
                    seen.add(s)
                    chosen.append(s)
            out[split][t] = chosen
    return out


class Sentences:
    """Sentence sampler of one ``speechllm.text`` config (``seed``, ``heldout_share``,
    ``heldout_max``): every split draws a template uniformly; a held-out split then draws one
    of that template's held-out sentences, the training split fills the template and redraws
    while the sentence is held out. Training sentences therefore never occur in the
    validation or test split."""

    def __init__(self, text_cfg: dict) -> None:
        self.cfg = dict(text_cfg)
        self.heldout = heldout_sets(text_cfg["seed"], text_cfg["heldout_share"],
                                    text_cfg["heldout_max"])  # fmt: skip
        self.excluded = {s for sets in self.heldout.values() for ss in sets.values() for s in ss}

    def draw(self, split: str, rng: np.random.Generator) -> str:
        """One sentence of ``split``."""
        t = int(rng.integers(len(TEMPLATES)))
        if split != "training":
            pool = self.heldout[split][t]
            return pool[int(rng.integers(len(pool)))]
        while True:
            s = fill(TEMPLATES[t], rng)
            if s not in self.excluded:
                return s

    def heldout_sentences(self, split: str) -> list[str]:
        """Every held-out sentence of ``split`` (validation or testing), template order."""
        return [s for t in sorted(self.heldout[split]) for s in self.heldout[split][t]]


def pretraining_formats(prompts: dict[str, str]) -> list[str]:
    """The formats of the decoder's text-pretraining examples: ``en`` (an English sentence),
    ``de`` (its German) and one per task prompt (see :func:`pretraining_text`)."""
    return ["en", "de", *prompts]


def pretraining_text(sentence: str, kind: str, prompts: dict[str, str]) -> str:
    """One text-pretraining example of a training ``sentence``: the sentence itself
    (``kind="en"``), its translation (``"de"``), or the task prompt ``kind`` (a template with
    one ``{speech}`` slot) with the English text standing in for the speech, followed by the
    task's target (a copy for ``asr``, the translation for ``st``): the pretrained decoder then
    already knows the prompts' formats, as an instruction-tuned LLM would."""
    if kind == "en":
        return sentence
    if kind == "de":
        return translate(sentence)
    return f"{prompts[kind].format(speech=sentence)} {target_text(sentence, kind)}"
