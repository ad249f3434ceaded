"""Teacher stage: LoRA adaptation of a causal LM, rationale generation and the rationale cache.

Modules, one job each:

- ``prompts``: the versioned prompt template (findings + report -> "Rationale:").
- ``corpus``: reading ``corpus/corpus.jsonl``; docs and prompt -> rationale pairs.
- ``lm_data``: tokenised examples, batches, held-out loss.
- ``modeling``: tokenizer/model loading, the small default Llama, LoRA targets, adapter hash.
- ``pretrain``: ``kdistill teacher pretrain`` (tokenizer + small Llama from scratch, offline).
- ``train``: ``kdistill teacher train`` (LoRA with accelerate; checkpoint/resume).
- ``generate``: ``kdistill teacher generate`` (fast, resumable, multi-process, checked).
- ``cache``: the rationale cache on disk (shards, metadata, merged dataset);
  ``load_rationales(path)`` is what the student reads.
- ``consistency``: the ``consistent`` rule.
"""
