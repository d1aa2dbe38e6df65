"""Config schemas (dataclasses), their registration with Hydra, validation and composition helpers."""
