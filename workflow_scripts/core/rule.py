"""What every rule script does first: log to the rule's log file, parse its cell params."""

from __future__ import annotations

import json
import logging
import sys

from workflow_scripts.core.provenance import now


class RuleContext:
    """The parsed ``snakemake`` object of a script rule: cell config, log, start time."""

    def __init__(self, smk) -> None:
        self.smk = smk
        self.started = now()
        from workflow_scripts.core.provenance import git_info

        self.git = git_info()  # the code as it was when the job started
        self.log_file = open(smk.log[0], "a", buffering=1) if smk.log else sys.stderr
        sys.stderr = self.log_file
        sys.stdout = self.log_file
        logging.basicConfig(
            stream=self.log_file,
            level=logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            force=True,
        )
        self.log = logging.getLogger(smk.rule)
        self.slice = json.loads(smk.params.slice) if "slice" in smk.params.keys() else {}
        from workflow_scripts.core import code

        code.PLAN = smk.params.get("code")  # what the rule planned this job to load
        self.seed: int | None = None
        self.log.info("rule %s wildcards %s", smk.rule, dict(smk.wildcards))
        self.log.info("config slice %s", smk.params.get("slice", "{}"))

    def inputs(self) -> dict:
        """Every input of the job by name (unnamed ones as ``input<i>``)."""
        named = dict(self.smk.input.items())
        taken = {str(p) for v in named.values() for p in (v if isinstance(v, list) else [v])}
        out = {f"input{i}": str(p) for i, p in enumerate(self.smk.input) if str(p) not in taken}
        return {**out, **named}

    def provenance(self, inputs: dict | None = None, seed: int | None = None) -> dict:
        """The job's provenance: config slice, code, every input (``inputs`` adds to the job's
        own, e.g. a file read through a folder input), seed, environment, times."""
        from workflow_scripts.core.provenance import collect

        self.seed = seed if seed is not None else self.seed
        return collect(
            self.slice,
            inputs={**self.inputs(), **(inputs or {})},
            seed=self.seed,
            rule=self.smk.rule,
            wildcards=dict(self.smk.wildcards),
            started=self.started,
            git=self.git,
        )

    def seal(self, seed: int | None = None) -> None:
        """Last step of every rule script: a provenance sidecar for each output that does not
        carry its own (every output but parquet files written by ``write_parquet``), so that
        ``make audit`` checks every output of the grid."""
        from workflow_scripts.core.provenance import read_provenance, write_sidecar

        meta = None
        for out in self.smk.output:
            if str(out).endswith(".parquet") and read_provenance(out):
                continue
            meta = meta or self.provenance(seed=seed)
            write_sidecar(out, meta)
