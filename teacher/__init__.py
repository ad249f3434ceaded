"""Teacher stage: LoRA adaptation of a causal LM, rationale generation and the rationale cache.

Modules, one job each:

- ``prompts``: the versioned prompt template in three modes (labels+report, report, labels).
- ``corpus``: reading ``corpus/corpus.jsonl``; docs and prompt -> rationale pairs.
- ``lm_data``: tokenised examples, batches, held-out loss.
- ``modeling``: tokenizer/model loading (remote code only with the user's flag), the small
  default Llama, LoRA targets, adapter hash.
- ``pretrain``: ``kdistill teacher pretrain`` (tokenizer + small Llama from scratch, or continued
  pretraining of a model folder; textbook docs at ``textbook_fraction``; resumable).
- ``train``: ``kdistill teacher train`` (LoRA with accelerate; checkpoint/resume; model card).
- ``generate``: ``kdistill teacher generate`` (fast, resumable, multi-process, checked), over
  ``backends`` (transformers / vLLM), ``decode`` + ``decode_families`` (continuous batching over
  a paged KV cache for Llama, Mistral, Qwen2, GPT-2) and ``checked`` (labelling, pooled retries).
- ``cache``: the rationale cache on disk (shards, metadata, merged dataset);
  ``load_rationales(path)`` is what the student reads. ``cards``: README.md model/dataset cards.
- ``probe``: what a teacher knows about the findings (signs -> finding, cause -> findings).
"""
