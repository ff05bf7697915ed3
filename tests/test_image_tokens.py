"""Camera frames as spatial tokens: shapes, the position of a small dot is learnable, the
augmentations, and checkpoints from before spatial tokens still load as pooled encoders."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ditpolicy.policies.encoders import (ImageEncoder, ImageTokens, ObservationEncoder, ObsSpec,
                                         adaptive_pool_matrix, color_jitter, encode_frames)


def dot_images(gen: torch.Generator, n: int, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Black frames with one 3x3 white dot; target: the dot's (x, y) scaled to [-1, 1]."""
    images = torch.zeros(n, size, size, 3, dtype=torch.uint8)
    xy = torch.randint(0, size - 3, (n, 2), generator=gen)
    for i in range(n):
        images[i, xy[i, 1]:xy[i, 1] + 3, xy[i, 0]:xy[i, 0] + 3] = 255
    return images, xy.float() / (size - 3) * 2 - 1


@pytest.mark.parametrize("kind", ["grid", "keypoints"])
def test_the_position_of_a_small_dot_is_learnable(kind):
    """Only where the dot is decides the target; chance level (predicting 0) is MSE 1/3."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    tokens = ImageTokens(kind)
    encoder = ImageEncoder(32, (8, 16, 16), tokens, (32, 32))
    head = nn.Linear(32 * tokens.per_frame, 2)
    optimizer = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=3e-3)
    for _ in range(250):
        images, target = dot_images(gen, 64)
        loss = F.mse_loss(head(encoder(images).flatten(1)), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    images, target = dot_images(torch.Generator().manual_seed(99), 256)
    with torch.no_grad():
        error = F.mse_loss(head(encoder(images).flatten(1)), target).item()
    assert error < 0.01, f"{kind}: held-out MSE {error:.4f} (chance 0.33)"


def test_token_counts_and_order():
    spec = ObsSpec(lowdim={"state": (4,)}, images={"front": (84, 84, 3), "wrist": (84, 84, 3)})
    encoder = ObservationEncoder(spec, n_obs=2, d_model=16, image_widths=(8, 8, 8, 8), image_tokens=ImageTokens("grid"))
    obs = {"state": torch.zeros(5, 2, 4), "front": torch.zeros(5, 2, 84, 84, 3, dtype=torch.uint8),
           "wrist": torch.zeros(5, 2, 84, 84, 3, dtype=torch.uint8)}
    out = encoder(obs)
    assert out.shape == (5, 2 + 2 * 2 * 9, 16) == (5, encoder.n_tokens, 16)
    assert encoder.slot_embedding.shape == (1, 6, 16)          # one slot per (input, history step)
    pooled = ObservationEncoder(spec, 2, 16, (8, 8, 8, 8))
    assert pooled(obs).shape == (5, 6, 16)


def test_grid_pooling_equals_adaptive_average_pooling():
    x = torch.randn(2, 5, 6, 7)
    ours = torch.einsum("gh,nchw,kw->ngkc", adaptive_pool_matrix(6, 3), x, adaptive_pool_matrix(7, 3))
    assert torch.allclose(ours.permute(0, 3, 1, 2), F.adaptive_avg_pool2d(x, 3), atol=1e-6)


def test_augmentations_are_on_only_when_training_and_as_configured():
    gen = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (3, 2, 32, 32, 3), generator=gen, dtype=torch.uint8)
    cnn = ImageEncoder(8, (8, 8), ImageTokens("grid", shift=0, color_jitter=0.0), (32, 32))
    assert torch.equal(encode_frames(cnn, frames, augment=True), encode_frames(cnn, frames, augment=False))
    jittered = color_jitter(frames.reshape(6, 32, 32, 3), 0.4)
    assert jittered.dtype == torch.uint8 and jittered.shape == (6, 32, 32, 3)
    assert not torch.equal(jittered, frames.reshape(6, 32, 32, 3))
    assert torch.equal(color_jitter(frames.reshape(6, 32, 32, 3), 0.0), frames.reshape(6, 32, 32, 3))
    with pytest.raises(ValueError, match="policy.image_encoder.tokens must be one of"):
        ImageTokens("patches")
    with pytest.raises(ValueError, match="policy.image_encoder.color_jitter must be in"):
        ImageTokens("grid", color_jitter=1.5)
