"""Structured pruning of the transformer stack with hard-concrete L0 gates and distillation
(Wang et al. 2023; DPHuBERT; CoFi): one cell per model x target sparsity.

Modules (only ``plan`` and ``report`` are torch-free; this package imports nothing):

* ``plan`` - the grid for ``rules/structured.smk``: cells, slices, inputs, targets, checks;
* ``gates`` - hard-concrete gates and their deterministic values;
* ``layers`` - :class:`~workflow_scripts.structured.layers.StructuredLayer`, one encoder block
  with explicit heads, head dimensions, FFN units and sublayers (masked forward);
* ``shrink`` - physical pruning of a block (gates folded into smaller weights);
* ``stack`` - the gated student and its expected sparsity;
* ``train`` - distillation loss, Lagrangian, target warm-up, the training loop;
* ``pruned`` - the pruned classifier: build, structure report, save, load;
* ``run`` - one cell: from the rule's files to the cell row and the saved pruned model;
* ``report`` - the summary table and the comparison chart's long table.
"""
