"""Exception hierarchy. Every user-facing failure is a :class:`StemstreamError` subclass whose
message is one clear line; the CLI prints it and exits non-zero instead of a traceback."""


class StemstreamError(Exception):
    """Base class of all errors stemstream reports to users."""


class AudioError(StemstreamError):
    """Missing, unreadable, empty or non-finite audio."""


class ConfigError(StemstreamError):
    """An invalid or inconsistent configuration value, or an unknown key."""


class CorpusError(StemstreamError):
    """A corpus directory that does not follow the Slakh2100 layout."""


class DependencyError(StemstreamError):
    """An optional system dependency (FluidSynth, a SoundFont, PortAudio...) is missing."""


class StreamError(StemstreamError):
    """Bad input to a session (NaN/Inf, wrong shape) or an unusable session snapshot."""
