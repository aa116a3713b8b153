"""Architectures: the CutNet container (the definition of layer n), the registry, the builders."""

from transferscope.models import convnet  # noqa: F401  (registers the built-in architectures)
from transferscope.models.cutnet import CutNet
from transferscope.models.registry import create_model, list_models, model_options, register_model

__all__ = ["CutNet", "create_model", "list_models", "model_options", "register_model"]
