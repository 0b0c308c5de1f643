"""Integrations with training frameworks; each needs its own optional extra.

- :mod:`.lightning`: :class:`~wciaudit.integrations.lightning.WCICallback`, WCI on a held
  batch as a Lightning callback (``pip install "wciaudit[lightning]"``).
"""
