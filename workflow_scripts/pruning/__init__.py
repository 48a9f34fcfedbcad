"""The layer-pruning stage: delete whole transformer blocks of a fine-tuned classifier, measure
test accuracy (and latency) per number of removed blocks, optionally heal with LoRA.

Modules: ``strategies`` (the strategy registry and the removal sets; numpy only), ``layers``
(physical removal, block counts), ``sweeps`` (prefix-resumed accuracy sweeps, the similarity
evaluator), ``heal`` (LoRA healing), ``plan`` (the rules' cells, slices, inputs and config
checks; torch-free), ``run`` (one cell), ``report`` (the summary table).

The public names are importable from the package (``from workflow_scripts import pruning;
pruning.remove_layers(model, [1])``); they are loaded on first use, so importing the package
(or its ``plan``) does not import torch.
"""

from __future__ import annotations

from workflow_scripts.core.lazy import lazy_exports

_EXPORTS = {
    "STRATEGIES": "strategies",
    "register": "strategies",
    "removal_sets": "strategies",
    "removal_plans": "strategies",
    "scores_from_cache": "strategies",
    "n_layers": "layers",
    "remove_layers": "layers",
    "transformer_parameters": "layers",
    "PrefixCache": "sweeps",
    "SimilarityEvaluator": "sweeps",
    "sweep": "sweeps",
    "sweep_logits": "sweeps",
    "sweep_predictions": "sweeps",
    "heal_with_lora": "heal",
    "lora_target_modules": "heal",
    "run_cell": "run",
    "cell_rows": "run",
    "summary_table": "report",
}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
