"""``python -m wciaudit`` (also under ``torchrun``)."""

from .cli.app import main

main()
