"""Where a chat run's conversations come from: the built dataset's splits, and the persona sets the guard
trains on and persona/ppl measures."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from anima.config.data import DataConfig
from anima.config.groups import PathsConfig, PersonaGuardConfig, TrackingConfig
from anima.errors import AnimaError, ConfigError, DataError
from anima.fingerprint import hash_bytes

SPLITS = ("train", "val", "test", "persona_train", "persona_val")


@dataclass
class ChatSource:
    """A chat dataset's splits and identity (name, content fingerprint, where it lives)."""

    name: str
    fingerprint: str
    path: str
    splits: dict[str, list[dict]]
    inputs: list[tuple[str, str, str, str]] = field(default_factory=list)  # (name, fp, path, context)


def load_chat_source(data: DataConfig, paths: PathsConfig, tracking: TrackingConfig) -> ChatSource:
    """The `data` config's built dataset (built and cached by the data stage's `ensure_dataset`)."""
    try:
        from anima.data.dataset import ensure_dataset
    except ImportError:
        raise AnimaError("data.kind=chat needs anima.data.dataset (the data stage), which is not installed") from None
    built = ensure_dataset(data, paths, tracking)
    splits = {}
    for name in SPLITS:
        try:
            splits[name] = list(built.split(name))
        except (KeyError, FileNotFoundError, DataError):
            splits[name] = []
    source = ChatSource(str(built.name), str(built.fingerprint), str(built.path), splits)
    reh = built.manifest.get("rehearsal")
    if reh:  # the replayed dataset is an input of the run too (as `anima data` records it), so lineage shows it
        ref = str(reh["source"])
        source.inputs.append((ref.split("/")[0], str(reh["fingerprint"]),
                              str(Path(paths.processed_dir) / ref), "rehearsal"))
    return source


def persona_sets(guard: PersonaGuardConfig, paths: PathsConfig, source: ChatSource) -> tuple[list[dict], list[dict]]:
    """(persona train, persona val): the seed set the guard trains on and the held-out set persona/ppl uses.

    loss.persona_guard.data may name a .jsonl chat file (train only) or a built dataset "name" /
    "name/fingerprint" (its persona_train / persona_val splits, else train / val): e.g. absorbing an off-persona
    dataset while guarding with, and measuring on, chat_mix's persona set. Default: this dataset's splits.
    """
    spec = guard.data
    own_val = source.splits.get("persona_val", [])
    if not spec:
        return source.splits.get("persona_train", []), own_val
    path = Path(spec)
    if path.suffix in (".jsonl", ".json") or path.is_file():
        from anima.data.chat_readers import read_jsonl_chats

        if not path.is_file():
            raise ConfigError(f"loss.persona_guard.data={spec}: no such file")
        source.inputs.append((path.stem, hash_bytes(path.read_bytes()), str(path.resolve()), "persona"))
        return read_jsonl_chats(path), own_val
    from anima.data.dataset import load_dataset_ref

    built = load_dataset_ref(spec, paths)
    source.inputs.append((built.name, built.fingerprint, str(built.path), "persona"))
    return built.split("persona_train") or built.split("train"), built.split("persona_val") or built.split("val")
