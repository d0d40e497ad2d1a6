"""The errors a user's input raises, for every layer to import (a leaf: it imports nothing)."""


class ConfigError(ValueError):
  """A config field's value cannot work; the message names the field."""
