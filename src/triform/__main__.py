"""``python -m triform``: the ``triform`` command (:func:`triform.cli.main`)."""

import sys

from triform.cli import main

sys.exit(main())
