"""Mimicking networks: replace a speech model's whole transformer stack by one or two small layers.

Method (Dorszewski et al., ICASSP 2025, section 2.3; see ``shared/papers/NOTES.md``)
-----------------------------------------------------------------------------------
A *mimicker* reads the feature-projection output ``(B, T, D)`` (what the transformer stack
receives) and predicts teacher hidden states: with ``depth`` 2, the output of its first layer
predicts an intermediate teacher layer (one per similarity block) and the output of its second
layer predicts the last teacher layer; with ``depth`` 1 the single output predicts the last
layer. ``depth`` 0 is the identity (the ``no_mimic`` baseline: the head reads the feature
projection directly). Stage 1 fits the mimicker to cached teacher states (MSE), stage 2 trains
the fine-tuned model's head (and optionally the mimicker) by cross-entropy.

Modules
-------
* :mod:`~workflow_scripts.mimic.plan` (torch-free): the grid, each cell's config slice and
  inputs, the aggregation's inputs, the config checks.
* :mod:`~workflow_scripts.mimic.targets` (torch-free): which teacher layers are predicted.
* :mod:`~workflow_scripts.mimic.model`: mimic layers, :class:`Mimicker`, the head, the
  mimicked model (audio -> conv front end -> feature projection -> mimicker -> head).
* the caches are read through :mod:`~workflow_scripts.backbones.rows` (lazy arrays of rows:
  the trainers read one mini-batch at a time).
* :mod:`~workflow_scripts.mimic.train`: stages 1 and 2 (``Stage1Config``, ``Stage2Config``).
* :mod:`~workflow_scripts.mimic.cost`: parameter and latency reduction.
* :mod:`~workflow_scripts.mimic.run`: one cell (``run_cell``), what ``scripts/mimic_cell.py``
  calls.
* :mod:`~workflow_scripts.mimic.report`: the summary table, its markdown, chart data.
"""
