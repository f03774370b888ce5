"""Runnable examples: the demo task (digits), a custom sink and an async service."""
