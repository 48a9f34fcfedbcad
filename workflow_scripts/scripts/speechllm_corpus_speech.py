"""Rule adapter: one speech split of the SpeechLLM stage made from real corpora
(``speechllm.speech.source: corpora``; workflow_scripts.speechllm.corpora.write_corpus_split).
Its provenance records, per task, the corpus part read and the lines and audio files skipped."""

import json

import torch

from workflow_scripts.core.provenance import canonical_json, write_text_atomic
from workflow_scripts.core.rule import RuleContext
from workflow_scripts.speechllm.corpora import write_corpus_split

ctx = RuleContext(snakemake)
s = ctx.slice
torch.set_num_threads(1)  # resampling: machine-independent, one core
df, summary = write_corpus_split(snakemake.output[0], s["split"], s["parts"], s["utterances"],
                                 log=ctx.log.info)  # fmt: skip
meta = ctx.provenance()
meta["corpora"] = canonical_json(summary)  # per task: rows, skips by reason, first paths
write_text_atomic(f"{snakemake.output[0]}/provenance.json",
                  json.dumps(meta, indent=1, sort_keys=True))  # fmt: skip
ctx.log.info("%d utterances, %.0f s of speech; skipped: %s", len(df), df.duration.sum(),
             {t: v["skipped_total"] for t, v in summary.items()})  # fmt: skip
ctx.seal()
