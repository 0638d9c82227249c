"""ArchLoop trainer service: LoRA fine-tunes the LLM on the corpus, one job at a time per slot, and
stores adapters with their metadata.
"""
