"""The terminal chat (`anima chat`) and its feedback file; chat templates live in `anima.tokenizer.chat_template`."""
