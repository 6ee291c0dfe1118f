"""voicebot: put a bot on an Exotel phone call."""

from voicebot._version import __version__

__all__ = ["__version__"]
