"""kiro-activity: per-user activity reports for AI coding assistant users."""

__version__ = "0.1.0"
