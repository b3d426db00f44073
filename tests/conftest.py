"""Shared fixtures. Tests run on CPU with one intra-op thread per process so parallel work stays fair."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")


def ranking_image_encoder(config) -> dict:
    """A seeded DAMSM image encoder's state for best-of-N tests. Its code projection has no bias: the init's code
    is mostly that bias, the same for every image, and every candidate's score would tie."""
    import torch

    from attngan.model import ImageEncoder

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        encoder = ImageEncoder(config.embedding_dim, kind=config.image_encoder, input_size=config.image_encoder_size)
    with torch.no_grad():
        encoder.emb_cnn_code.bias.zero_()
    return encoder.state_dict()
