"""Small helpers shared across the package: atomic writes and output paths, image geometry, image file
completeness, figures, environment variables."""
