"""Which command sentences a config's training reads, and sentences it never does: the source
of ``speechllm.text.extra_test_sentences`` (``config/speechllm_extra_test_sentences.txt``).

The training sentences are a pure function of the config, drawn without making audio or
touching a model: each pretrained decoder's text pretraining
(:func:`~workflow_scripts.speechllm.text.pretraining_examples`, ``steps x batch_size`` draws)
and the training split's utterances (:func:`~workflow_scripts.speechllm.speech.split_sentences`:
SpeechLLM training and healing read its first ones). The same code draws them for the jobs, so
this replay is exact.

Why the extra test sentences exist (issue #28): the held-out sets hold 100 test sentences, and
every other sentence of 14 of the 15 templates was drawn by the shipped models' training
(``config/pretrain_speechllm.yaml``); only ``NUM NUM NUM NUM`` (10,000 sentences) has sentences
it never drew. Adding such sentences to the held-out set leaves every training draw unchanged
(the sampler only redraws a sentence that is held out, and these are never drawn), so the
shipped models stay exactly what their recipe makes while the test split gains unseen
sentences (``tests/test_speechllm_text.py`` replays it).

``python -m workflow_scripts.speechllm.unseen --configfile config/pretrain_speechllm.yaml
--count 100 --out config/speechllm_extra_test_sentences.txt`` writes the file. Torch-free.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import sys
from pathlib import Path

import numpy as np

from workflow_scripts.speechllm.settings import DEFAULT_PROMPTS, PRETRAIN_TASKS

CONFIG = "config.yaml"
DEFAULT_TEMPLATE = "NUM NUM NUM NUM"


def load_config(configfiles=(), root: str | Path = ".") -> dict:
    """``config.yaml`` of ``root`` with ``configfiles`` over it as the workflow assembles them
    (their grid registries replace config.yaml's), validated with the schema's defaults."""
    import yaml

    from workflow_scripts import grid

    cfg = yaml.safe_load((Path(root) / CONFIG).read_text())
    overrides = grid.command_line_overrides([str(f) for f in configfiles])
    return grid.validate(grid.assemble(cfg, {}, overrides))


def _pretraining_prompts(spec: dict) -> dict[str, str]:
    tasks = spec.get("tasks") or PRETRAIN_TASKS
    return {t: p for t, p in DEFAULT_PROMPTS.items() if t in tasks}


def trained_sentences(config: dict, text_cfg: dict | None = None) -> dict[str, list[str]]:
    """Every sentence ``config``'s training draws, in order, by source: ``pretraining:<name>``
    per decoder with a ``pretrain`` spec, ``training split`` (its utterances; read by SpeechLLM
    training and healing). ``text_cfg``: another text config than the config's
    (:func:`~workflow_scripts.speechllm.plan.text_slice`)."""
    from workflow_scripts.speechllm import plan
    from workflow_scripts.speechllm.speech import split_sentences
    from workflow_scripts.speechllm.text import (
        Sentences,
        pretraining_examples,
        pretraining_formats,
    )

    text = plan.text_slice(config) if text_cfg is None else text_cfg
    s = plan.section(config)
    out: dict[str, list[str]] = {}
    for name in plan.pretrained_decoders(config):
        spec = s["decoders"][name]["pretrain"]
        formats = pretraining_formats(_pretraining_prompts(spec))
        draws = pretraining_examples(Sentences(text), spec.get("seed", 0), formats)
        n = spec["steps"] * spec["batch_size"]
        out[f"pretraining:{name}"] = [x for x, _ in itertools.islice(draws, n)]
    sp = s["speech"]
    n = sp["utterances"]["training"]
    if n and (plan.trained_speechllms(config) or plan.heal_settings(config)):
        out["training split"] = split_sentences("training", n, config["corpus"], text,
                                                sp["seed"], sp["sessions"])  # fmt: skip
    return out


def unseen_sentences(config: dict, count: int, template: str = DEFAULT_TEMPLATE,
                     seed: int = 0) -> list[str]:  # fmt: skip
    """``count`` sentences of ``template`` that ``config``'s training never draws (replayed
    without any extra test sentences) and that are in neither held-out set, in a seeded order;
    an error when there are fewer."""
    from workflow_scripts.speechllm.text import Sentences, template_sentences

    text = {**config["speechllm"]["text"], "extra_test_sentences": None}
    drawn = {x for v in trained_sentences(config, text).values() for x in v}
    held = Sentences(text).excluded
    pool = [x for x in template_sentences(template) if x not in drawn and x not in held]
    if len(pool) < count:
        raise ValueError(f"only {len(pool)} sentences of {template!r} are never trained on, "
                         f"not {count}")  # fmt: skip
    order = np.random.default_rng([seed, 43]).permutation(len(pool))
    return [pool[int(k)] for k in order[:count]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--configfile",
        nargs="*",
        default=[],
        help="config files over config.yaml (the training recipe to avoid)",
    )
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--template", default=DEFAULT_TEMPLATE)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="the file to write (default: stdout)")  # fmt: skip
    a = ap.parse_args(argv)
    config = load_config(a.configfile)
    chosen = unseen_sentences(copy.deepcopy(config), a.count, a.template, a.seed)
    files = " ".join(a.configfile) or "(none)"
    head = [
        "# Extra held-out test sentences of the SpeechLLM stage (speechllm.text.",
        "# extra_test_sentences; workflow_scripts/speechllm/unseen.py). Sentences of the",
        f"# template {a.template!r} that the training of config.yaml + {files}",
        "# never draws (decoder text pretraining, the training split) and that are in neither",
        "# held-out set: the shipped models never trained on them. Written by",
        f"#   python -m workflow_scripts.speechllm.unseen --configfile {files} "
        f"--count {a.count} --seed {a.seed}",
    ]
    text = "\n".join([*head, *chosen]) + "\n"
    if a.out:
        Path(a.out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
