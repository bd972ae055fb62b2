"""The project's synthetic identity set (protomem/data/synthetic.hpp, docs/synthetic-data.md),
bound from the same C++ source the C++ trainer uses: any number of identities, every image a pure
function of (seed, identity, image index).

    data = protomem.synthetic.IdentitySet(seed=1)           # the defaults of examples/train
    x = data.images(identities, indices)                     # float32 n x data.image_dim
    dataset = protomem.synthetic.Faces(data, identities=1000, images_per_identity=8)  # a Dataset
"""
import torch

from . import _C

__all__ = ["Config", "IdentitySet", "Faces"]

Config = _C.synthetic.Config


class IdentitySet:
    """The data set; keyword arguments set the knobs of Config (seed, latent_dim, nuisance_dim,
    hidden_dim, image_dim, intra, similarity, families, lookalike_fraction, lookalike_distance,
    nuisance, gain, noise)."""

    def __init__(self, config=None, **knobs):
        config = config if config is not None else Config()
        for name, value in knobs.items():
            if not hasattr(config, name):
                raise ValueError(f"synthetic.IdentitySet: unknown knob {name!r}")
            setattr(config, name, value)
        self.config = config
        self._set = _C.synthetic.IdentitySet(config)

    @property
    def image_dim(self):
        return self._set.image_dim

    def images(self, identities, indices):
        """Image indices[i] of identity identities[i], for every i: a float32 n x image_dim tensor."""
        ids = torch.as_tensor(identities, dtype=torch.int64).reshape(-1).contiguous()
        idx = torch.as_tensor(indices, dtype=torch.int64).reshape(-1).contiguous()
        if ids.numel() != idx.numel():
            raise ValueError(f"synthetic.IdentitySet.images: {ids.numel()} identities but "
                             f"{idx.numel()} image indices")
        if ids.numel() and (int(ids.min()) < 0 or int(idx.min()) < 0):
            raise ValueError("synthetic.IdentitySet.images: identities and indices must be >= 0")
        return self._set.images(ids, idx)

    def image(self, identity, index):
        """One image (float32 [image_dim])."""
        return self.images([identity], [index])[0]

    def lookalike_of(self, identity):
        """The planted look-alike of `identity`, or -1."""
        return self._set.lookalike_of(int(identity))

    def family_of(self, identity):
        return self._set.family_of(int(identity))


class Faces(torch.utils.data.Dataset):
    """Identities [0, identities) of an IdentitySet as a torch Dataset: sample s is image s % n of
    identity s // n (n = images_per_identity), labelled with the identity; ``labels`` holds every
    sample's label (what GroupedBatchSampler takes)."""

    def __init__(self, data, identities, images_per_identity):
        self.data, self.n = data, int(images_per_identity)
        self.labels = torch.arange(int(identities)).repeat_interleave(self.n)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        identity, image = divmod(int(index), self.n)
        return self.data.image(identity, image), identity
