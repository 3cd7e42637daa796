"""The error every configuration check raises."""


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the key and how to fix it."""
