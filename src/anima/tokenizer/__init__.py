"""SentencePiece training and its exact Hugging Face wrapper (tokenizer.json + chat template).

Submodules import sentencepiece / transformers lazily; importing this package is cheap.
"""
