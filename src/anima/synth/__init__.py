"""Teacher data synthesis: ask a teacher (any OpenAI-compatible endpoint, or a local model dir) for replies to
a prompt set and write them as a JSONL chat dataset that the data stage reads as a source.

Submodules import the openai client / torch lazily.
"""

from anima.synth.synthesize import SynthResult, load_prompts, synthesize
from anima.synth.teachers import HFTeacher, OpenAITeacher, TeacherClient

__all__ = ["HFTeacher", "OpenAITeacher", "SynthResult", "TeacherClient", "load_prompts", "synthesize"]
