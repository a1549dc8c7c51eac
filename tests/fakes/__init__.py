"""Local stand-ins for paid cloud APIs (OpenAI, Azure OpenAI) that answer like the real ones."""
