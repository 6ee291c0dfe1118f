"""``python -m voicebot``: see ``voicebot.cli``."""

from voicebot.cli import main

raise SystemExit(main())
