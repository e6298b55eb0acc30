"""Sharing on the Hugging Face Hub: model cards for trained and converted models."""

from .model_card import conversion_model_card, describe_config, metrics_table, training_model_card

__all__ = ["conversion_model_card", "describe_config", "metrics_table", "training_model_card"]
