"""The healing cells (issue #28, "healing is confounded"): what healing gains beyond the extra
training it is, and one healed pruned backbone for every task.

* Control ``cells/speechllm_heal/{sllm}/control.parquet``: the *unpruned* decoder (n = 0) given
  the healing budget of the healed pruned models (:func:`~workflow_scripts.speechllm.heal.heal`
  with nothing removed: the same steps, learning rate, batch, training utterances, seed and
  adapter shape, so the same batches in the same order), one adapter per task (``healing =
  task``) and, when joint healing is on, one adapter for every task (``healing = joint``),
  each scored on the test utterances of the task(s) it was trained for. The tables report
  every healed n against it: a pruned-and-healed model within the threshold of the healed
  control costs little *given the same training*, whatever the untrained baseline is.
* Joint ``cells/speechllm_heal/{sllm}/joint-{strategy}.parquet``: for each healed n (and
  seed), the removal set of the strategy's pruning cell of ``joint_removal_task`` (one pruned
  backbone for every task, as the paper's conclusion), healed *once* on every task at once
  (each drawn training utterance gets a task uniformly), then that one adapter scored on each
  task's test utterances, beside the same pruned model unhealed.

Rows (one per evaluated task and removal set): ``model``, ``task``, ``strategy`` (``control``
for the control), ``healing`` (``task`` / ``joint``), ``seed``, ``n_removed``, ``n_layers``,
``removed``, the unhealed ``wer`` / ``bleu`` / ``ser`` (joint only), ``healed_wer``,
``healed_bleu``, ``healed_ser``, ``heal_seconds``, ``adapter_sha256`` (of the adapter's
weights: the same for every task of one joint adapter) and the budget
(:func:`~workflow_scripts.speechllm.heal.budget`). Beside each cell, ``.records.parquet``: one
row per evaluated state and test utterance, as the pruning cells' (``healing`` added), from
which every WER and BLEU of the cell is recomputed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import pandas as pd

from workflow_scripts.speechllm.settings import HEAL_CONTROL, HEAL_JOINT

Log = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


def healing_strategy(name: str) -> str | None:
    """The strategy of a healing cell's name (``joint-backward`` -> ``backward``), None for
    the control."""
    return None if name == HEAL_CONTROL else name.removeprefix(f"{HEAL_JOINT}-")


def _frames(rows: list[dict], records: list[dict], sllm: str, model_dir: str,
            n_test: dict[str, int]) -> tuple[pd.DataFrame, pd.DataFrame]:  # fmt: skip
    from workflow_scripts.speechllm.run import factors

    df, rec = pd.DataFrame(rows), pd.DataFrame(records)
    for d in (df, rec):
        d.insert(0, "model", sllm)
        d["seed"] = d["seed"].astype("Int64")
    for k, v in factors(model_dir).items():
        df[k] = v
    df["test_utterances"] = df.task.map(n_test)  # each row's task's test utterances
    return df, rec


def heal_cell(
    cell: dict,
    *,
    sllm: str,
    healing: str,
    model_dir: str,
    test: tuple[str, str],
    train: tuple[str, str],
    pruning: str | None = None,
    log: Log = _quiet,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The table and per-utterance records of the healing cell ``healing`` (``control`` or
    ``joint-<strategy>``; see the module docstring) for the ``cell`` slice of
    :func:`~workflow_scripts.speechllm.plan.heal_slice`; ``test`` and ``train`` are (features
    file, speech folder) pairs; ``pruning`` is the joint cell's removal-set source (the pruning
    cell of ``joint_removal_task`` and its strategy)."""
    from workflow_scripts.speechllm.heal import heal, healed_columns
    from workflow_scripts.speechllm.model import decoder_layers, load_speechllm
    from workflow_scripts.speechllm.pruning import removed_layers
    from workflow_scripts.speechllm.run import _records, _score, _split_data, utterance_ids

    model = load_speechllm(model_dir, with_encoder=False)
    L = len(decoder_layers(model.decoder))
    hc, tasks = cell["heal"], list(cell["tasks"])
    # per task: its test utterances (a split made from corpora holds each task's own)
    test_data = {t: _split_data(*test, cell["test_utterances"], [t]) for t in tasks}
    ids = {t: utterance_ids(test[1], len(test_data[t][1]), t) for t in tasks}
    train_data = _split_data(*train, hc["train_utterances"], tasks)
    n_train = len(train_data[1])
    rows: list[dict] = []
    records: list[dict] = []

    def scored(m, task):
        return _score(m, *test_data[task], task, cell)

    strategy = healing_strategy(healing)
    if strategy is None:  # the n = 0 control: one adapter per task, one for all when joint
        modes = [(HEAL_CONTROL, "task", [t]) for t in tasks]
        if cell["joint"]:
            modes.append((HEAL_CONTROL, HEAL_JOINT, tasks))
        for name, mode, trained_on in modes:
            t0 = time.time()
            data = train_data
            if trained_on != tasks:  # one task's adapter: its utterances (corpora: its own)
                data = _split_data(*train, hc["train_utterances"], trained_on)
            healed = heal(model, [], trained_on, *data, hc)
            seconds = time.time() - t0
            for task in trained_on:
                state = {"task": task, "strategy": name, "healing": mode, "seed": None,
                         "n_removed": 0, "removed": []}  # fmt: skip
                res = scored(healed, task)
                rows.append({**state, "n_layers": L, "wer": math.nan, "bleu": math.nan,
                             "ser": math.nan,
                             **healed_columns(res, healed, seconds, hc,
                                              len(data[1]))})  # fmt: skip
                records += _records({**state, "healed": True}, res, ids[task])
                log(f"control ({mode}, {task}): healed WER {res['wer']:.4f} ({seconds:.1f} s)")
    else:  # joint healing of the removal task's sets
        sets = pd.read_parquet(pruning)
        todo = sets[sets.n_removed.isin(hc["n"])].sort_values(["seed", "n_removed"])
        for r in todo.itertuples():
            seed = None if pd.isna(r.seed) else int(r.seed)
            removed = [int(i) for i in r.removed]
            base = {"strategy": strategy, "healing": HEAL_JOINT, "seed": seed,
                    "n_removed": len(removed), "removed": removed}  # fmt: skip
            before = {}
            with removed_layers(model.decoder, removed):
                for task in tasks:
                    before[task] = scored(model, task)
                    records += _records({"task": task, **base, "healed": False},
                                        before[task], ids[task])  # fmt: skip
            t0 = time.time()
            healed = heal(model, removed, tasks, *train_data, hc)  # one adapter, every task
            seconds = time.time() - t0
            for task in tasks:
                res, b = scored(healed, task), before[task]
                state = {"task": task, **base}
                rows.append({**state, "n_layers": L, "wer": b["wer"], "bleu": b["bleu"],
                             "ser": b["ser"],
                             **healed_columns(res, healed, seconds, hc, n_train)})  # fmt: skip
                records += _records({**state, "healed": True}, res, ids[task])
                log(f"joint {removed} ({task}): WER {b['wer']:.4f} -> {res['wer']:.4f}")
    df, rec = _frames(rows, records, sllm, model_dir, {t: len(d[1]) for t, d in test_data.items()})
    if strategy is not None:
        df["removal_task"] = cell["removal_task"]
    return df, rec
