"""Entry script for the pseudo-terminal chat test: builds a ChatSession on a model dir and runs the REPL on
the real stdin/stdout (a pty in the test), exactly as ``anima chat`` will.

usage: python chat_pty_entry.py MODEL_DIR FEEDBACK_PATH MAX_RETRIES
"""

import sys

import torch

from anima.chat.repl import ChatSession, run_repl
from anima.generation.engine import ChatEngine
from anima.generation.sampling import SamplingParams


def main() -> int:
    model_dir, feedback, retries = sys.argv[1], sys.argv[2], int(sys.argv[3])
    torch.set_num_threads(1)
    engine = ChatEngine(model_dir)
    session = ChatSession(engine, SamplingParams(max_new_tokens=8, seed=11), feedback_path=feedback,
                          model_uri="models:/nano@champion", max_retries=retries, model_version="1")
    return run_repl(session)


if __name__ == "__main__":
    sys.exit(main())
