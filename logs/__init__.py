"""Logged sessions: the canonical format, its validation, and adapters from public formats."""

from rankgym.logs.errors import LogValidationError
from rankgym.logs.session_log import SCHEMA_VERSION, SessionLog

__all__ = ["SCHEMA_VERSION", "LogValidationError", "SessionLog"]
