"""Research directions as small working experiments (Part 10c), one module per concept:

- :mod:`~llmbook.research.sentences`, :mod:`~llmbook.research.concepts` and
  :mod:`~llmbook.research.retrieval`: a concept-level model over sentence embeddings
  ({doc}`/book/part10/06-concepts`);
- :mod:`~llmbook.research.hyperbolic`, :mod:`~llmbook.research.trees` and
  :mod:`~llmbook.research.tree_embedding`: Poincaré-ball embeddings of hierarchies
  ({doc}`/book/part10/07-hyperbolic`);
- :mod:`~llmbook.research.boundless_bpe` and :mod:`~llmbook.research.boundless_train`: BoundlessBPE,
  BPE with merges across pre-token boundaries ({doc}`/book/part10/08-boundless-bpe`);
- :mod:`~llmbook.research.patching` and :mod:`~llmbook.research.latent`: entropy patching and a tiny
  byte-latent model ({doc}`/book/part10/09-byte-patches`).

Nothing is re-exported here: import from the modules, so that importing one direction does not load
the others' dependencies (the sentence encoder pulls in ``transformers``).

Introduced in {doc}`/book/part10/07-hyperbolic`.
"""
