"""Model registry: CIFAR ResNets and VGGs, small-input torchvision ResNets, LeNet-300-100, a small CNN, ViTs."""
from gradscope.models.registry import get_model, list_models

__all__ = ["get_model", "list_models"]
