"""The package version, read by hatchling and by ``python -m voicebot version``."""

__version__ = "0.1.0"
