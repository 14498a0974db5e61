"""``python -m triform``: the ``triform`` command (:func:`triform.cli.main`)."""

import sys

try:
    from triform.cli import main
except KeyboardInterrupt:  # Ctrl-C while Python starts the command: one line, no traceback
    print("triform: interrupted", file=sys.stderr)
    sys.exit(130)

sys.exit(main())
