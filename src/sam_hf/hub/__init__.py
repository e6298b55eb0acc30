"""Sharing on the Hugging Face Hub: model cards, one-commit pushes, and remote code for trust_remote_code."""

from .model_card import conversion_model_card, describe_config, metrics_table, training_model_card
from .push import push_to_hub
from .remote_code import add_remote_code, remote_code_files

__all__ = [
    "add_remote_code",
    "conversion_model_card",
    "describe_config",
    "metrics_table",
    "push_to_hub",
    "remote_code_files",
    "training_model_card",
]
