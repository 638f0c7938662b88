"""stemstream: streaming music accompaniment.

A musician plays; while the audio streams in, a causal model over neural-codec tokens plays one
more instrument stem that fits. See README.md and docs/ for usage.
"""

from stemstream.errors import StemstreamError

__version__ = "0.1.0"

__all__ = ["StemstreamError", "__version__"]
