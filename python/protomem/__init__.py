"""protomem: Prototype Memory for PyTorch trainers.

A fixed-size memory of class prototypes as the classifier head of a margin softmax, for training
face (speaker, person, product) embeddings over any number of identities; a thin binding of the
C++ library (include/protomem/). See docs/python.md.

    head = protomem.PrototypeMemory(capacity=65536, dim=512, margin=protomem.CosFace(64, 0.35),
                                    aging=protomem.AgeDecay(8))
    loss = head(embeddings, labels)   # B x D float32 CPU, int64 labels
    loss.backward()                   # dL/dE into the encoder; the memory update is committed here
"""
import torch as _torch  # noqa: F401  (loads libtorch before the extension)

from ._C import (AgeDecay, ArcFace, CombinedMargin, CosFace, DetachedExemplarMean,
                 DoppelgangerMining, Error, ExemplarMean, FirstInFirstOut, LeastRecentlyWritten,
                 LeaveOneOut, MaxAge, Momentum, NoAging, NoMargin, NoMining, Replace)
from ._head import (PartialFCCompatible, PrototypeMemory, UnsupportedError, default_aging,
                    margin_from_insightface)
from ._sampler import GroupedBatchSampler
from . import data, synthetic

__version__ = "0.1.0"

# Name the bound classes by the package users import them from.
for _name in ("Error", "UnsupportedError", "NoMargin", "CosFace", "ArcFace", "CombinedMargin",
              "ExemplarMean", "DetachedExemplarMean", "LeaveOneOut", "Replace", "Momentum",
              "LeastRecentlyWritten", "FirstInFirstOut", "NoMining", "DoppelgangerMining",
              "NoAging", "MaxAge", "AgeDecay"):
    try:
        globals()[_name].__module__ = "protomem"
    except (AttributeError, TypeError):
        pass
del _name

# Short names of the queue policies, as the C++ docs use them.
LRW = LeastRecentlyWritten
FIFO = FirstInFirstOut

__all__ = [
    "PrototypeMemory", "PartialFCCompatible", "GroupedBatchSampler", "margin_from_insightface",
    "NoMargin", "CosFace", "ArcFace", "CombinedMargin",
    "ExemplarMean", "DetachedExemplarMean", "LeaveOneOut",
    "Replace", "Momentum", "LeastRecentlyWritten", "FirstInFirstOut", "LRW", "FIFO",
    "NoMining", "DoppelgangerMining", "NoAging", "MaxAge", "AgeDecay", "default_aging", "Error",
    "UnsupportedError", "data", "synthetic",
]
