"""Data: the CUB layout (and a simpler custom layout), image transforms, and the synthetic birds."""

from trainer.data.dataset import Batch, Sample, TextImageDataset, collate_batch

__all__ = ["Batch", "Sample", "TextImageDataset", "collate_batch"]
