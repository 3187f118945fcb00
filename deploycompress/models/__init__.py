"""The built-in model zoo and loading of a user's own model."""
from .zoo import ZooModel, create_model, list_models, model_registry

__all__ = ["ZooModel", "create_model", "list_models", "model_registry"]
