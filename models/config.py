"""A model's text configuration, in one place (multimodal configs nest it)."""

from __future__ import annotations


def text_config(config):
    """``config.get_text_config()`` where the config has one (multimodal models), else ``config``."""
    return config.get_text_config() if hasattr(config, "get_text_config") else config
