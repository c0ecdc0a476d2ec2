"""Issue 26's validation loss: one fixed held-out set, scored the same way in every version.

`records` (the files: series, JSON beside each LoRA, `best`; no torch) and `items` (content hashes and the noise
rule) are light; `score` (the pass), `trainer` (the hooks of musubi-tuner's trainer) and `offline`
(`make validate`) need torch and musubi-tuner and are imported only where they run.
"""
