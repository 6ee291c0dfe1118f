"""Build the compiled kernels (voicebot._dsp); everything else about the package is in pyproject.toml."""

from setuptools import Extension, setup

# optional: where no C compiler is found the install goes on without the module (with a warning):
# voicebot.audio.Resampler then runs its numpy reference (bit for bit the same, 1.5-3x the CPU) and
# voicebot.protocol uses binascii for base64 (2.5-7x the CPU).
setup(ext_modules=[Extension("voicebot._dsp", ["voicebot/_dsp.c"], optional=True)])
