"""Sub-commands of the ``triform`` CLI, one module each (see :mod:`triform.cli`)."""
