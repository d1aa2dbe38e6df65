"""Model exporters: GGUF (llama.cpp) and llama2.c's legacy .bin.

Importing this package is cheap (numpy only); torch, safetensors, sentencepiece and gguf load
inside the export functions.
"""

from __future__ import annotations

from anima.export.gguf_export import GGUF_DTYPES, check_dtype, export_gguf
from anima.export.llama2c import export_llama2c

__all__ = ["GGUF_DTYPES", "check_dtype", "export_gguf", "export_llama2c"]
