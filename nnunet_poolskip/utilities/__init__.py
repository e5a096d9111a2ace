"""Small helpers shared across the package: atomic writes, image geometry, figures, environment variables."""
