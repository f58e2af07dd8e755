"""ctb-mobile toolchain: partial fine-tuning, distillation, merging and export of multi-task BERTs.

Importing this package is cheap: torch, transformers and every export backend are imported
inside the functions that need them.
"""

__version__ = "0.1.0"


class UserError(Exception):
    """A problem with what the user gave us (recipe, data, paths, options).

    The message is one line that names the bad value and says how to fix it; the CLI prints it
    without a traceback and exits non-zero.
    """
