"""Logged sessions: the canonical format, its validation, and adapters from public formats."""

from envs.logs.errors import LogValidationError
from envs.logs.session_log import SCHEMA_VERSION, SessionLog

__all__ = ["SCHEMA_VERSION", "LogValidationError", "SessionLog"]
