"""Errors a user can act on, and the exit codes shared by every subcommand (docs/architecture.md)."""

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_INPUTS_FAILED = 3
EXIT_QC_FAIL = 4
EXIT_QC_REVIEW = 5
# 6, not 2: a log that fails verification is a finding about the record, not a mistake in the command
# (2 would read as "fix your arguments"), and not 3 (inputs) or 4/5 (verdicts). A station that cannot
# append its record exits 6 too: a verdict that leaves no audit trail must not read as PASS.
EXIT_AUDIT = 6


class MscvisionError(Exception):
    """A problem the user can fix: printed as one line, without a traceback."""

    exit_code = EXIT_USAGE


class ConfigError(MscvisionError):
    """A bad config key or value."""


class DataError(MscvisionError):
    """A bad data set: manifest row, label, missing file, empty set."""


class ImageError(MscvisionError):
    """One image cannot be used (unreadable, wrong channels, wrong bit depth, too large).

    Carries ``path`` and ``reason`` apart, so a prediction row's reason is the reason, not a message
    with the path cut off it; ``str()`` is ``"PATH: REASON"``.
    """

    exit_code = EXIT_INPUTS_FAILED

    def __init__(self, path: object, reason: str):
        super().__init__(str(path), reason)  # both in args, so the error pickles (loader workers)
        self.path: str = str(path)
        self.reason: str = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class ModelError(MscvisionError):
    """A model file that is missing, unreadable or not an mscvision model of a known version."""


class AuditTrailBroken(MscvisionError):
    """The audit log fails verification (edited, reordered, truncated, rewritten, cut short by a kill),
    or an append is refused because of it: nothing more is written until a person has looked."""

    exit_code = EXIT_AUDIT
