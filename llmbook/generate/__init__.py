"""Sampling and generation.

Introduced in {doc}`/book/part2/07-sampling`.
"""

from llmbook.generate.beam import BeamSearchOutput, beam_search, check_beam_settings
from llmbook.generate.generation import (
    GenerationOutput,
    eval_mode,
    generate,
    left_pad,
    sequence_logprobs,
)
from llmbook.generate.sampling import check_sampling, sample_next, top_k_filter, top_p_filter

__all__ = [
    "BeamSearchOutput",
    "beam_search",
    "check_beam_settings",
    "GenerationOutput",
    "check_sampling",
    "eval_mode",
    "generate",
    "left_pad",
    "sample_next",
    "sequence_logprobs",
    "top_k_filter",
    "top_p_filter",
]
