"""User-facing errors: each one is printed as a single line, with no traceback.

Everything a user can get wrong (a config key, a manifest line, a video file, a bucket name)
raises a subclass of `UserError` whose message names the file, field or value at fault.
Entry points run under `loong_dist.cli.run_job`, which turns these into one line on stderr and
exit code 2. Programming errors are not `UserError`s and keep their traceback.
"""


class UserError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


class ConfigError(UserError):
    """A config key, type or value is wrong."""


class ManifestError(UserError):
    """A manifest file or line is malformed."""


class VideoError(UserError):
    """A video file cannot be read, or holds fewer frames than asked."""


class StorageError(UserError):
    """A path or s3:// URI cannot be read or written."""


class StorageUnavailable(StorageError):
    """The store itself failed, after botocore's retries: the endpoint refused or dropped the
    connection, timed out, answered 5xx or throttled. Unlike a missing object or a denied access,
    this says nothing about the object asked for, so work that meets it is retried later, never
    judged on it (data_prep.pretokenize fails the task and lets Ray retry it)."""


class TextTokenizerError(UserError):
    """The text tokenizer cannot be trained or loaded."""


class SampleDataError(UserError):
    """A sample archive cannot be fetched, or a file's sha256 is not the pinned one."""
