"""The command language of the SpeechLLM stage: sentences of 2-6 words over the 35 Speech
Commands keywords plus a few grammar words, held-out sentence sets, and the speech-translation
stand-ins (English -> German, task ``st``; English -> Spanish, task ``st_es``; each from a fixed
bilingual word list).

A sentence is drawn by picking one of :data:`TEMPLATES` uniformly and filling its slots from
the word classes (:data:`CLASSES`); every keyword is in some class. The held-out sentences
(:func:`heldout_sets`: a share of each template, distinct for validation and testing, plus the
config's ``extra_test_sentences``, :func:`read_sentences`) are a pure function of the text
config; training sentences are drawn from the same templates with every held-out sentence
excluded (:class:`Sentences`), so no held-out sentence is ever trained on, neither by the
decoder's text pretraining nor by the SpeechLLM. The test split says its sentences in a seeded
order, each once before any repeats (:meth:`Sentences.sentence`), so n test utterances say
min(n, number of test sentences) distinct sentences.

The translation is word by word from the language's word list (:data:`WORDS`), with two rules
that make it more than a substitution: the article ``the`` takes the gender of its noun (German
der / die / das, Spanish el / la; the genders differ between the languages: die katze, el gato)
and ``turn on|off X`` follows the language's verb (German: separable, the particle last,
``schalte X an|aus``; Spanish: one verb per particle, ``enciende|apaga X``). Torch-free.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

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
#: The second target language's word list (English -> Spanish); ``please`` is two words.
SPANISH: dict[str, str] = {
    "backward": "atrás", "bed": "cama", "bird": "pájaro", "cat": "gato", "dog": "perro",
    "down": "abajo", "eight": "ocho", "five": "cinco", "follow": "sigue", "forward": "adelante",
    "four": "cuatro", "go": "ve", "happy": "feliz", "house": "casa", "learn": "aprende",
    "left": "izquierda", "marvin": "marvin", "nine": "nueve", "no": "no", "off": "apaga",
    "on": "enciende", "one": "uno", "right": "derecha", "seven": "siete", "sheila": "sheila",
    "six": "seis", "stop": "para", "three": "tres", "tree": "árbol", "two": "dos",
    "up": "arriba", "visual": "visual", "wow": "guau", "yes": "sí", "zero": "cero",
    "and": "y", "then": "luego", "turn": "enciende", "is": "está", "steps": "pasos",
    "please": "por favor",
}  # fmt: skip
SPANISH_ARTICLES: dict[str, str] = {"bird": "el", "dog": "el", "tree": "el", "cat": "el",
                                    "bed": "la", "house": "la"}  # fmt: skip
#: Per target language: the word list, the article by noun (and the article of any other
#: word), and ``turn on|off``: (verb, particle put last or None) per particle.
WORDS: dict[str, dict[str, str]] = {"de": GERMAN, "es": SPANISH}
ARTICLES_OF: dict[str, tuple[dict[str, str], str]] = {"de": (ARTICLES, "die"),
                                                      "es": (SPANISH_ARTICLES, "el")}  # fmt: skip
SWITCH_VERBS: dict[str, dict[str, tuple[str, str | None]]] = {
    "de": {"on": ("schalte", "an"), "off": ("schalte", "aus")},
    "es": {"on": ("enciende", None), "off": ("apaga", None)},
}
#: The language of the speech (every sentence is English).
SPEECH_LANGUAGE = "en"
#: Tasks and the language each writes: ``asr`` the transcript, ``st`` German (the shipped
#: SpeechLLMs' translation task), ``st_es`` Spanish.
TASK_LANGUAGE: dict[str, str] = {"asr": SPEECH_LANGUAGE, "st": "de", "st_es": "es"}
TASKS: tuple[str, ...] = tuple(TASK_LANGUAGE)
SPLITS: tuple[str, ...] = ("training", "validation", "testing")


def task_kind(task: str) -> str:
    """``asr`` (transcription) or ``st`` (translation, into :data:`TASK_LANGUAGE`)."""
    return "asr" if TASK_LANGUAGE.get(task, SPEECH_LANGUAGE) == SPEECH_LANGUAGE else "st"


def target_languages(tasks) -> list[str]:
    """The translation target languages of ``tasks``, in :data:`TASKS` order, each once."""
    out = [TASK_LANGUAGE[t] for t in TASKS if t in tasks and task_kind(t) == "st"]
    return list(dict.fromkeys(out))


def english_words() -> list[str]:
    """The English vocabulary: the 35 keywords and the grammar words."""
    return [*SPEECH_COMMANDS_WORDS, *GRAMMAR_WORDS]


def german_words() -> list[str]:
    """The German vocabulary: every translation and article, sorted."""
    return sorted(set(GERMAN.values()) | set(ARTICLES.values()))


def language_words(language: str) -> list[str]:
    """A target language's vocabulary (whitespace-separated words of every translation,
    article and ``turn`` verb), sorted; ``de`` is :func:`german_words`."""
    if language == "de":
        return german_words()
    arts, default = ARTICLES_OF[language]
    verbs = [w for v, p in SWITCH_VERBS[language].values() for w in (v, p) if w]
    phrases = [*WORDS[language].values(), *arts.values(), default, *verbs]
    return sorted({w for ph in phrases for w in ph.split()})


def translate(sentence: str, language: str = "de") -> str:
    """The ``language`` (German by default) of an English command sentence (see the module
    docstring)."""
    if language not in WORDS:
        raise ValueError(f"unknown target language {language!r}; languages: {list(WORDS)}")
    table, switch = WORDS[language], SWITCH_VERBS[language]
    articles, default = ARTICLES_OF[language]
    words = sentence.split()
    out: list[str] = []
    particle = None
    for i, w in enumerate(words):
        if w == "turn" and i + 1 < len(words) and words[i + 1] in ("on", "off"):
            verb, particle = switch[words[i + 1]]
            out.append(verb)
            continue
        if i > 0 and words[i - 1] == "turn" and w in ("on", "off"):
            continue
        if w == "the":
            nxt = words[i + 1] if i + 1 < len(words) else ""
            out.append(articles.get(nxt, default))
            continue
        if w not in table:
            raise ValueError(f"no translation of {w!r} in {sentence!r}")
        out.append(table[w])
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
    """What a SpeechLLM should write for ``task``: the transcript (``asr``) or its translation
    into the task's language (``st``: German, ``st_es``: Spanish); for an utterance of a real
    corpus (:class:`workflow_scripts.speechllm.splits.Sentence`), its reference."""
    if task not in TASK_LANGUAGE:
        raise ValueError(f"unknown task {task!r}; tasks: {list(TASKS)}")
    if (targets := getattr(sentence, "targets", None)) is not None:
        if task not in targets:
            raise ValueError(f"{sentence!r} has no reference for {task!r}, only {list(targets)}")
        return targets[task]
    if task_kind(task) == "asr":
        return sentence
    return translate(sentence, TASK_LANGUAGE[task])


def template_size(template: str) -> int:
    """How many distinct sentences ``template`` gives (an optional slot adds one: empty)."""
    n = 1
    for token in template.split():
        name = token.rstrip("?")
        if name in CLASSES:
            n *= len(CLASSES[name]) + token.endswith("?")
    return n


def template_sentences(template: str) -> list[str]:
    """Every sentence of ``template``, in slot order (:func:`template_size` of them)."""
    import itertools

    slots = []
    for token in template.split():
        name = token.rstrip("?")
        words = list(CLASSES[name]) if name in CLASSES else [name]
        slots.append(words + ([""] if token.endswith("?") else []))
    return [" ".join(w for w in combo if w) for combo in itertools.product(*slots)]


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


def read_sentences(path: str | os.PathLike) -> list[str]:
    """The sentences of a text file, one per line (blank lines and ``#`` comments skipped),
    normalised (:func:`normalize`)."""
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"no sentence file {str(p)!r}")
    lines = (ln.split("#", 1)[0] for ln in p.read_text(encoding="utf-8").splitlines())
    return [normalize(ln) for ln in lines if ln.strip()]


def extra_test_sentences(text_cfg: dict) -> list[str]:
    """The text config's ``extra_test_sentences``: a list of sentences, a file of them
    (:func:`read_sentences`), or none."""
    extra = text_cfg.get("extra_test_sentences")
    if not extra:
        return []
    if not isinstance(extra, str | os.PathLike):
        return list(extra)
    from pathlib import Path

    path = Path(extra)
    if not path.is_absolute() and not path.exists():
        # a run in another working directory (snakemake --directory, make smoke-paper) reads
        # the project's own file: relative paths are the project folder's
        path = Path(__file__).resolve().parents[2] / path
    return read_sentences(path)


class Sentences:
    """Sentence sampler of one ``speechllm.text`` config (``seed``, ``heldout_share``,
    ``heldout_max``, optional ``extra_test_sentences``): every split draws a template uniformly;
    the validation split then draws one of that template's held-out sentences, the training
    split fills the template and redraws while the sentence is held out. Training sentences
    therefore never occur in the validation or test split. The test split's sentences are the
    held-out test sets plus the extra test sentences (each a sentence of some template, in
    neither held-out set), said in a seeded order (:meth:`sentence`)."""

    def __init__(self, text_cfg: dict) -> None:
        self.cfg = dict(text_cfg)
        self.heldout = heldout_sets(text_cfg["seed"], text_cfg["heldout_share"],
                                    text_cfg["heldout_max"])  # fmt: skip
        self.excluded = {s for sets in self.heldout.values() for ss in sets.values() for s in ss}
        self.extra = extra_test_sentences(text_cfg)
        if self.extra:
            language = {s for t in TEMPLATES for s in template_sentences(t)}
            bad = [s for s in self.extra if s not in language]
            dup = sorted({s for s in self.extra if self.extra.count(s) > 1})
            held = [s for s in self.extra if s in self.excluded]
            for what, v in (("are no sentences of the command language", bad),
                            ("are listed twice", dup), ("are already held out", held)):  # fmt: skip
                if v:
                    raise ValueError(f"extra test sentences {v[:5]} {what}")
            self.excluded |= set(self.extra)
        tests = self.heldout_sentences("testing")
        order = np.random.default_rng([text_cfg["seed"], 37]).permutation(len(tests))
        self.test_order = [tests[int(k)] for k in order]

    def draw(self, split: str, rng: np.random.Generator) -> str:
        """One sentence of ``split`` (the training split, or a template then one of its
        held-out sentences: validation; testing without the extra sentences)."""
        t = int(rng.integers(len(TEMPLATES)))
        if split != "training":
            pool = self.heldout[split][t]
            return pool[int(rng.integers(len(pool)))]
        while True:
            s = fill(TEMPLATES[t], rng)
            if s not in self.excluded:
                return s

    def sentence(self, split: str, i: int, rng: np.random.Generator) -> str:
        """The sentence of utterance ``i`` of ``split``: testing, the ``i``-th of the test
        sentences in their seeded order, cycling (every test sentence once before any twice);
        training and validation, :meth:`draw` with ``rng``."""
        if split == "testing":
            return self.test_order[i % len(self.test_order)]
        return self.draw(split, rng)

    def heldout_sentences(self, split: str) -> list[str]:
        """Every held-out sentence of ``split`` (validation or testing), template order; the
        test split's extra sentences last."""
        out = [s for t in sorted(self.heldout[split]) for s in self.heldout[split][t]]
        return out + self.extra if split == "testing" else out


def pretraining_formats(prompts: dict[str, str]) -> list[str]:
    """The formats of the decoder's text-pretraining examples: ``en`` (an English sentence),
    each translation target language of the prompts' tasks (``de`` for ``st``, ``es`` for
    ``st_es``: the sentence's translation) and one per task prompt (see
    :func:`pretraining_text`). The prompts ``asr`` and ``st`` give ``en, de, asr, st``."""
    return [SPEECH_LANGUAGE, *target_languages(prompts), *prompts]


def pretraining_examples(sentences: Sentences, seed: int,
                         formats: list[str]) -> Iterator[tuple[str, str]]:  # fmt: skip
    """The decoder's text-pretraining draws, endless: (a training sentence, a format of
    ``formats``), from the generator seeded by ``(seed, 51)``; what the decoder's pretraining
    reads and what :mod:`workflow_scripts.speechllm.unseen` replays."""
    rng = np.random.default_rng([seed, 51])
    while True:
        sentence = sentences.draw("training", rng)
        yield sentence, formats[int(rng.integers(len(formats)))]


def pretraining_text(sentence: str, kind: str, prompts: dict[str, str]) -> str:
    """One text-pretraining example of a training ``sentence``: the sentence itself
    (``kind="en"``), its translation (a target language, ``"de"`` / ``"es"``), or the task
    prompt ``kind`` (a template with one ``{speech}`` slot) with the English text standing in
    for the speech, followed by the task's target (a copy for ``asr``, the translation for
    ``st`` / ``st_es``): the pretrained decoder then already knows the prompts' formats, as an
    instruction-tuned LLM would."""
    if kind == SPEECH_LANGUAGE:
        return sentence
    if kind in WORDS:
        return translate(sentence, kind)
    return f"{prompts[kind].format(speech=sentence)} {target_text(sentence, kind)}"
