"""The animal2vec-style teacher, in data-flow order: sinc -> encoder -> transformer -> heads
(+ metadata heads); `Animal2Vec` assembles them."""

from train.model.animal2vec import (
    Animal2Vec,
    FrameLogits,
    Output,
    apply_mask_embedding,
    layerwise_param_groups,
)
from train.model.metadata import MetadataHeads, grad_reverse, grl_lambda

__all__ = [
    "Animal2Vec",
    "FrameLogits",
    "MetadataHeads",
    "Output",
    "apply_mask_embedding",
    "grad_reverse",
    "grl_lambda",
    "layerwise_param_groups",
]
