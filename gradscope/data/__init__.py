"""Datasets as uint8 tensors (registry, decoded caches) and the whole-batch ``BatchLoader``."""
from gradscope.data.datasets import (DataBundle, default_roots, list_datasets, load_dataset,
                                     load_dataset_from_config)
from gradscope.data.loader import BatchLoader, epoch_key

__all__ = ["DataBundle", "BatchLoader", "epoch_key", "load_dataset", "load_dataset_from_config", "list_datasets",
           "default_roots"]
