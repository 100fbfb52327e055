"""Data layer: sources, layouts, the manifest, validation and the synthetic generator."""
