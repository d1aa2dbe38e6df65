"""Building, saving and resolving models (every model is a standard Hugging Face Llama dir)."""
