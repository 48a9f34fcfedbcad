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
        self.log.info("rule %s wildcards %s", smk.rule, dict(smk.wildcards))
        self.log.info("config slice %s", smk.params.get("slice", "{}"))

    def provenance(self, inputs: dict | None = None, seed: int | None = None) -> dict:
        from workflow_scripts.core.provenance import collect

        return collect(
            self.slice,
            inputs=inputs,
            seed=seed,
            rule=self.smk.rule,
            wildcards=dict(self.smk.wildcards),
            started=self.started,
            git=self.git,
        )
