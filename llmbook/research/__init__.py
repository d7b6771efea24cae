"""Research directions as small working experiments (Part 10c): hyperbolic embeddings, and (to come)
concept-level models and byte-latent patches.

Introduced in {doc}`/book/part10/07-hyperbolic`.
"""
