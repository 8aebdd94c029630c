"""voiceface pipeline: Prefect-free stages from a manifest row to WebDataset samples."""

__version__ = "0.1.0"
# Recorded in every sample; bump when a stage's output changes for the same input and config.
PIPELINE_VERSION = __version__
