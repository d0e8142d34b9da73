"""Project exception types for errors a user can fix (bad config, bad data, bad index).

Every message names the file, line, key or id at fault and says what was expected.
"""


class LatentLabError(Exception):
    """Base class of all user-facing latentlab errors."""


class ConfigError(LatentLabError):
    """An experiment YAML or a command-line override is wrong (unknown key, wrong type, bad value)."""


class DataError(LatentLabError):
    """A data file is malformed (bad JSON line, missing field, unknown evidence id, missing image)."""


class IndexError_(LatentLabError):  # noqa: N801, N818 - the trailing _ avoids shadowing the builtin
    """A built memory or index is unusable (wrong compressor, failed checksum, dimension mismatch)."""


class ModelLoadError(LatentLabError):
    """A model spec cannot be resolved or its weights do not match the architecture."""
