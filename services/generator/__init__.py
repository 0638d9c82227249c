"""ArchLoop generator service: Turns the current LLM (base model + this cycle's LoRA adapter) into
candidate programs in full, delta or factor mode; local transformers or TGI backend.
"""
