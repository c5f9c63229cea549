"""Deploy target profiles shipped with compressor: one ``<name>.toml`` per target.

Read them with :func:`compressor.targets.load_target` (found through ``importlib.resources``, so
they work from a wheel as well as from a checkout). The schema is documented in
``compressor/targets.py`` and in each file's comments.
"""
