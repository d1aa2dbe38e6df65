"""The terminal chat (`anima chat`). Its feedback file is `anima.data.feedback`; chat templates are
`anima.tokenizer.chat_template`."""
