"""Elimination-singularity diagnostics: per-layer weight and activation statistics, the history recorded during
training, plots, and the entry point that loads a trained nnU-Net model folder."""
