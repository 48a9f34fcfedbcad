"""Rule adapter: synthesise the spoken-keyword corpus (see workflow_scripts.data.corpus)."""

import json
import shutil
from pathlib import Path

from workflow_scripts.core.rule import RuleContext
from workflow_scripts.data.corpus import synthesize_corpus

ctx = RuleContext(snakemake)  # noqa: F821
out = Path(snakemake.output[0])  # noqa: F821
tmp = out.with_name(out.name + ".partial")
shutil.rmtree(tmp, ignore_errors=True)
summary = synthesize_corpus(tmp, ctx.slice)
prov = ctx.provenance(seed=ctx.slice["seed"])
(tmp / "provenance.json").write_text(json.dumps({**prov, "summary": summary}, indent=1))
shutil.rmtree(out, ignore_errors=True)
tmp.rename(out)
ctx.log.info("corpus written: %s", summary)
ctx.seal()
