"""llmbook: the tested package behind the book *LLMs from scratch*.

Chapters import from here; every object is documented in the API reference.
"""

__version__ = "0.1.0"

from llmbook.device import default_device, environment_report, supported_dtypes
from llmbook.model import GPT, ModelConfig
from llmbook.runinfo import RunInfo, start_run
from llmbook.seed import set_seed

__all__ = [
    "GPT",
    "ModelConfig",
    "RunInfo",
    "__version__",
    "default_device",
    "environment_report",
    "set_seed",
    "start_run",
    "supported_dtypes",
]
