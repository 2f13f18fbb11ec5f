"""The one exception type users see: a one-line message, exit code 2 from the CLI."""


class EfflmError(Exception):
    """Bad input or an unsupported request, explained in one line."""


class ConfigError(EfflmError):
    """A method config or recipe with invalid values."""
