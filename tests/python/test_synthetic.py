"""protomem.synthetic: the C++ identity set of examples/train, bound."""
import math

import pytest
import torch

import protomem


def test_images_are_pure_functions_of_identity_and_index():
    data = protomem.synthetic.IdentitySet(seed=3)
    assert data.image_dim == 128
    ids, idx = torch.tensor([5, 9, 5, 123456789]), torch.tensor([0, 2, 1, 7])
    batch = data.images(ids, idx)
    assert batch.shape == (4, 128) and batch.dtype == torch.float32
    for r in range(4):
        assert torch.equal(data.image(int(ids[r]), int(idx[r])), batch[r])
    assert torch.equal(protomem.synthetic.IdentitySet(seed=3).images(ids, idx), batch)
    assert not torch.equal(protomem.synthetic.IdentitySet(seed=4).images(ids, idx), batch)
    # images of one identity are closer to each other than to another identity's (on average)
    same = data.images([1] * 8, range(8))
    other = data.images(range(100, 108), [0] * 8)
    cos = lambda a, b: torch.nn.functional.cosine_similarity(a, b, dim=1).mean()  # noqa: E731
    assert cos(same[:4], same[4:]) > cos(same[:4], other[:4])


def test_knobs_and_lookalikes():
    data = protomem.synthetic.IdentitySet(seed=1, lookalike_fraction=1.0, image_dim=16)
    assert data.image_dim == 16 and data.images([0], [0]).shape == (1, 16)
    assert data.lookalike_of(10) == 11 and data.lookalike_of(11) == 10
    none = protomem.synthetic.IdentitySet(seed=1, lookalike_fraction=0.0)
    assert none.lookalike_of(10) == -1
    with pytest.raises(ValueError, match="similarity"):
        protomem.synthetic.IdentitySet(similarity=1.5)
    with pytest.raises(ValueError, match="unknown knob"):
        protomem.synthetic.IdentitySet(colour=3)
