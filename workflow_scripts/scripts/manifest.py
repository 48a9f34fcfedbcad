"""Rule adapter: scan and check every clip, write the manifest parquet and a summary."""

import json

from workflow_scripts.core.provenance import write_parquet, write_text_atomic
from workflow_scripts.core.rule import RuleContext
from workflow_scripts.data.corpus import SPEECH_COMMANDS_WORDS
from workflow_scripts.data.loader import build_manifest

ctx = RuleContext(snakemake)  # noqa: F821
words = ctx.slice["words"] or SPEECH_COMMANDS_WORDS
df, summary = build_manifest(ctx.slice["root"], words)
for key, value in summary.items():
    ctx.log.info("%s: %s", key, value)
bad = df[~df.usable]
for row in bad.itertuples():
    ctx.log.warning("skipped %s: %s", row.path, row.status)
meta = ctx.provenance()
meta["summary"] = json.dumps(summary, sort_keys=True)
write_parquet(df, snakemake.output.manifest, meta)  # noqa: F821
write_text_atomic(snakemake.output.summary, json.dumps(summary, indent=1, sort_keys=True))  # noqa: F821
ctx.seal()
