"""Typed errors that the command line maps to one-line messages and exit code 2.

Library code raises these with a message a user can act on; it never prints or exits.
"""

from __future__ import annotations


class WCIAuditError(Exception):
    """Base class: a problem with the user's input that the user can fix."""


class CheckpointError(WCIAuditError):
    """The checkpoint cannot be read, is not a checkpoint, or does not fit the architecture."""


class DataError(WCIAuditError):
    """The dataset cannot be read or does not fit the model (shape, range, labels)."""


class ConfigError(WCIAuditError):
    """A setting is out of range or malformed (command-line option, config file, result file)."""
