"""Running flows: the assertion language, placeholder interpolation and the step engine.

The pure helpers (``expressions``, ``interpolate``) take their clock and randomness injected.
"""
