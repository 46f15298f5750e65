"""The ``syncsvc`` sub-commands, one module per group; each registers itself with ``add_to``.

Handlers import what they need inside the function, so ``syncsvc --help`` and the start-up of
one command do not pay for every other command's dependencies.
"""
