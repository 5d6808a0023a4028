"""The errors of checkpoint loading (apart, so that every reader can raise them)."""


class CheckpointMismatchError(ValueError):
    """The checkpoint does not fit the model's architecture."""
