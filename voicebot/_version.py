"""The package version, read by the build (setuptools) and by ``python -m voicebot version``."""

__version__ = "0.1.0"
