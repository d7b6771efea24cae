"""``python -m llmbook ...`` runs the command line (also ``torchrun ... -m llmbook train ...``)."""

import sys

from llmbook.cli import main

if __name__ == "__main__":
    sys.exit(main())
