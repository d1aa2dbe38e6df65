"""HTTP serving: an OpenAI-compatible (and Ollama-style) FastAPI app around one ChatEngine.

``app.create_app`` assembles the app from ``openai_api`` and ``ollama_api`` (one module per API flavour, sharing
``streaming``), ``protocol`` (request parsing), ``runner`` (one engine, one lock) and ``limits``;
``server`` runs it with uvicorn. Importing this package is cheap: FastAPI/uvicorn are imported by the submodules.
"""
