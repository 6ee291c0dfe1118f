"""Example bots. Run one with ``python -m voicebot serve --handler handlers.echo:EchoBot``."""
