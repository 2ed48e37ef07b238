"""The data layer's stages: landing file -> raw -> bronze (+ quarantine) -> silver."""
