"""Pool Skip for nnU-Net v2: modules, injection, trainers, data conversion, evaluation and diagnostics."""
__version__ = "0.2.1"
