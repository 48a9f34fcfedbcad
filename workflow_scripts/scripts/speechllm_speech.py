"""Rule adapter: the spoken command sentences of one split (workflow_scripts.speechllm.speech)."""

import json

from workflow_scripts.core.provenance import write_text_atomic
from workflow_scripts.core.rule import RuleContext
from workflow_scripts.speechllm.speech import synthesize_split

ctx = RuleContext(snakemake)
s = ctx.slice
df = synthesize_split(snakemake.output[0], s["split"], s["utterances"], s["corpus"], s["text"],
                      s["seed"], s["augment"], s["sessions"], log=ctx.log.info)  # fmt: skip
meta = ctx.provenance(seed=s["seed"])
prov = json.dumps(meta, indent=1, sort_keys=True)
write_text_atomic(f"{snakemake.output[0]}/provenance.json", prov)
ctx.log.info("%d utterances, %.0f s of speech", len(df), df.duration.sum())
ctx.seal()
