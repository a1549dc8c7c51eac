"""Protege: capture production LLM traffic and distill it into smaller, cheaper models."""

__version__ = "0.1.0"
