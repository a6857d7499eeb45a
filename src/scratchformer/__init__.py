"""scratchformer: a from-scratch Transformer workbench."""

__version__ = "0.1.0"
