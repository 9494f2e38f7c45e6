"""Datasets as uint8 tensors resident on the training device, with batched augmentation.

Why: the seeds' loops decode and transform every image with PIL on every epoch. Here each
dataset is decoded once into a cached uint8 tensor (N, C, H, W); batches are slices of that
tensor on the device, and random-crop + flip run for the whole batch at once. An augmented
image is fully described by its *view* (flip, dy, dx), which is what makes an exact teacher
output cache possible (see kdcore.cache).
"""
from __future__ import annotations

from .bundle import DataBundle, Split, stratified_split, stratified_subset
from .decode import IMAGE_SUFFIXES, cache_dir
from .loader import Batch, DeviceLoader, apply_views, num_views
from .sources import CIFAR10_CLASSES, DATASETS, EUROSAT_CLASSES, default_root, load_dataset, make_synthetic

__all__ = ["Batch", "CIFAR10_CLASSES", "DATASETS", "DataBundle", "DeviceLoader", "EUROSAT_CLASSES", "IMAGE_SUFFIXES",
           "Split", "apply_views", "cache_dir", "default_root", "load_dataset", "make_synthetic", "num_views",
           "stratified_split", "stratified_subset"]
