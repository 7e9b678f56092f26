"""Typed errors that the CLI and the service map to one message each."""


class RnnlmError(Exception):
    """A problem the user can fix: bad input, a bad path, a broken checkpoint."""


class CheckpointError(RnnlmError):
    """A checkpoint directory is missing, truncated, mismatched or unsafe."""


class TokenizerError(RnnlmError):
    """A tokenizer cannot be built or loaded."""
