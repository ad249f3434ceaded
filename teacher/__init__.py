"""Teacher stage: LoRA adaptation of a causal LM, rationale generation and the rationale cache."""
