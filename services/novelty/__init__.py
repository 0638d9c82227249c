"""ArchLoop novelty service: MinHash-Jaccard near-duplicate filter over code tokens (and a structural
channel over layer tokens); persistent collections other tools can call.
"""
