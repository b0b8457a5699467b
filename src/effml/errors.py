"""One exception family for everything effml refuses to do, so the CLI can print one clear line."""


class EffmlError(Exception):
    """Base class: the message names what was wrong (the op, the layer, the field) and what to do."""


class ConfigError(EffmlError, ValueError):
    """A config dataclass, a model config file or a command-line value is invalid."""


class ModelError(EffmlError, RuntimeError):
    """The user's model could not be built or raised on its example input."""


class CountError(EffmlError, RuntimeError):
    """A cost formula met an argument it cannot count (never a silent wrong number)."""
