"""What a model's reconstruction decoder shows: reconstructions of test images, and the winning capsule's pose
dimensions perturbed one at a time (Sabour, Frosst & Hinton 2017, Figure 4)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from capsules.layers import ReconstructionDecoder, mask_to_class

# Sabour et al. 2017, Figure 4: each dimension of the winning capsule tweaked by intervals of 0.05 in [-0.25, 0.25].
PERTURBATIONS = torch.arange(-5, 6, dtype=torch.float64) * 0.05  # 11 values, 0 in the middle


def decoder_of(model: nn.Module) -> ReconstructionDecoder | None:
    """The model's reconstruction decoder (its ``decoder`` attribute), or None for a model without one."""
    decoder = getattr(model, "decoder", None)
    return decoder if isinstance(decoder, ReconstructionDecoder) else None


@torch.no_grad()
def reconstruct(model: nn.Module, images: Tensor) -> tuple[Tensor, Tensor]:
    """(predicted classes [N], reconstructions [N, C, H, W]) of images [N, C, H, W] by a model in eval mode whose
    decoder reconstructs from the predicted (most active) class capsule. ValueError for a model without a
    decoder."""
    decoder = _require_decoder(model)
    output = model(images, None)
    return output.activations.argmax(dim=1), output.reconstruction.view(len(images), *decoder.image_shape)


@torch.no_grad()
def perturbed_reconstructions(model: nn.Module, image: Tensor, deltas: Tensor = PERTURBATIONS
                              ) -> tuple[int, Tensor]:
    """(winning class, reconstructions [D, S, C, H, W]) of one image [C, H, W]: row d decodes the class capsules
    with the winner's pose entry d shifted by each of the S `deltas`, every other capsule and entry unchanged."""
    decoder = _require_decoder(model)
    output = model(image[None], None)
    poses, activations = output.poses, output.activations  # [1, K, D], [1, K]
    winner = int(activations.argmax(dim=1))
    D, S = poses.shape[-1], len(deltas)
    shifted = poses.repeat(D * S, 1, 1).view(D, S, *poses.shape[1:])  # [D, S, K, D]
    dims = torch.arange(D, device=poses.device)
    shifted[dims, :, winner, dims] += deltas.to(poses)[None, :]
    chosen = torch.full((D * S,), winner, dtype=torch.long, device=poses.device)
    decoded = decoder.layers(mask_to_class(shifted.view(D * S, *poses.shape[1:]), chosen))
    return winner, decoded.view(D, S, *decoder.image_shape)


def _require_decoder(model: nn.Module) -> ReconstructionDecoder:
    decoder = decoder_of(model)
    if decoder is None:
        raise ValueError(f"{type(model).__name__} has no reconstruction decoder")
    return decoder
