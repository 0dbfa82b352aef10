"""Volatility 3 imports every module of a ``-p`` plugin directory at start-up; this one
brings in the URL handler, layer, stacker and symbol finder of ``vmi.volatility.layer``
(Volatility finds them as subclasses of its interfaces). See ``vmi.volatility``."""

from vmi.volatility.layer import (  # noqa: F401 (imported to be registered)
    VmiHandler,
    VmiLayer,
    VmiStacker,
    VmiSymbolFinder,
)
