"""Multichannel Wiener filtering of separated stems, as Spleeter's optional "MWF" output.

Official Spleeter hands its estimates to `norbert.wiener` (one expectation-maximisation
iteration by default). One iteration is done here, on one segment at a time: each stem gets a
power spectrogram (mean over channels) and a 2x2 spatial covariance per frequency, and its new
estimate is the Wiener gain `v_j R_j (sum_k v_k R_k)^-1` applied to the mixture.
"""

from __future__ import annotations

import numpy as np

EPSILON = 1e-10


def wiener_filter(mixture: np.ndarray, stems: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`mixture` and each stem: complex (frames, bins, 2). Returns refined stems."""
    powers, covariances = {}, {}
    for name, estimate in stems.items():
        power = np.mean(np.abs(estimate) ** 2, axis=-1)  # (frames, bins)
        outer = np.einsum("tfi,tfj->fij", estimate, np.conj(estimate))
        covariances[name] = outer / (EPSILON + power.sum(axis=0))[:, None, None]
        powers[name] = power
    mix_cov = sum(powers[n][..., None, None] * covariances[n][None] for n in stems)
    mix_cov = mix_cov + EPSILON * np.eye(2, dtype=mix_cov.dtype)
    inverse = _inverse_2x2(mix_cov)
    refined = {}
    for name in stems:
        gain = powers[name][..., None, None] * np.einsum(
            "fij,tfjk->tfik", covariances[name], inverse
        )
        refined[name] = np.einsum("tfij,tfj->tfi", gain, mixture).astype(np.complex64)
    return refined


def _inverse_2x2(matrix: np.ndarray) -> np.ndarray:
    a, b = matrix[..., 0, 0], matrix[..., 0, 1]
    c, d = matrix[..., 1, 0], matrix[..., 1, 1]
    determinant = a * d - b * c
    determinant = np.where(np.abs(determinant) < EPSILON, EPSILON, determinant)
    inverse = np.empty_like(matrix)
    inverse[..., 0, 0], inverse[..., 0, 1] = d, -b
    inverse[..., 1, 0], inverse[..., 1, 1] = -c, a
    return inverse / determinant[..., None, None]
