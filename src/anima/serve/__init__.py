"""HTTP serving: an OpenAI-compatible (and Ollama-style) FastAPI app around one ChatEngine.

``anima.serve.app.create_app`` builds the app; ``anima.serve.server`` runs it with uvicorn. Importing this
package is cheap: FastAPI/uvicorn are imported by the submodules.
"""
