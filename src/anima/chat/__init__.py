"""Chat formatting (templates and assistant masks), terminal chat and the OpenAI-compatible server."""
