"""``python -m wciaudit`` (also under ``torchrun``)."""

import sys

try:
    from .cli.app import main
except KeyboardInterrupt:  # Ctrl-C while torch and timm import
    print("wciaudit: error: interrupted; no output was written", file=sys.stderr)
    sys.exit(130)

main()
