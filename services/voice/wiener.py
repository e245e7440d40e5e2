"""Multichannel Wiener filtering of the stems, as official Spleeter's "MWF" option computes it.

Official Spleeter (spleeter/model/__init__.py, `_build_mwf_output_waveform`) calls
`norbert.wiener(v, x)` with norbert 0.2.1's defaults on the whole recording at once: v = each
stem's magnitude estimate (the network's output, zero above bin F), x = the mixture's STFT.
With those defaults (`use_softmask=True`, `iterations=1`, eps = float32 epsilon) that is:
1. soft masks y_j = v_j / (eps + sum_k v_k) * x;
2. x and y scaled by m = max(1, max|x| / 10);
3. per stem a power spectrogram p_j = mean over channels |y_j|^2 and one 2x2 spatial covariance
   per frequency over the whole recording, R_j = sum_t y_j y_j^H / (eps + sum_t p_j);
4. per frame, y_j = p_j R_j (sum_k p_k R_k + sqrt(eps) I)^-1 x, then scaled back by m.

Step 3 needs the whole recording before any frame can be filtered, so the recording is read
twice: `WienerStatistics.add` gathers m and R_j segment by segment (memory stays one segment),
then `WienerStatistics.filter` filters each segment with them. Each pass recomputes the
engine's estimates rather than keeping them (hundreds of MB for a long recording).
"""

from __future__ import annotations

import numpy as np

# norbert uses the epsilon of the mixture's real dtype, float32 (complex64 STFT).
EPSILON = float(np.finfo(np.float32).eps)
REGULARISATION = float(np.sqrt(EPSILON))
# norbert.wiener: the mixture is scaled so that its peak is at most 10.
SCALE_PEAK = 10.0


class WienerStatistics:
    """The whole-recording statistics of the Wiener filter, gathered segment by segment.

    2x2 matrices are written out entry by entry: per time-frequency point that is a handful of
    multiplications, where `einsum` over such small matrices is several times slower.
    """

    def __init__(self, stems: tuple[str, ...]) -> None:
        self.stems = stems
        # Per stem, over all frames: sum_t y_i conj(y_j) per bin, complex128 (bins, 2, 2), and
        # sum_t mean_c |y|^2 per bin, float64 (bins,).
        self._covariance: dict[str, np.ndarray] = {}
        self._power: dict[str, np.ndarray] = {}
        self._peak = 0.0
        self._counted_frames = 0
        self._covariances: dict[str, np.ndarray] | None = None
        self._active = np.zeros(0, bool)
        self._scale = 1.0

    def add(self, first_frame: int, mixture: np.ndarray, magnitudes: dict[str, np.ndarray]) -> None:
        """Counts one segment: `mixture` complex (frames, bins, 2) starting at `first_frame`;
        frames already counted (segments may overlap) are skipped."""
        new = max(self._counted_frames - first_frame, 0)
        if new >= len(mixture):
            return
        mixture = mixture[new:]
        estimates = _soft_masks(mixture, {stem: magnitudes[stem][new:] for stem in self.stems})
        self._peak = max(self._peak, float(np.abs(mixture).max(initial=0.0)))
        for stem, y in estimates.items():
            y = y.astype(np.complex128)
            outer = np.empty((y.shape[1], 2, 2), np.complex128)
            for i in range(2):
                for j in range(2):
                    outer[:, i, j] = (y[..., i] * y[..., j].conj()).sum(axis=0)
            power = _power(y).sum(axis=0)
            if stem in self._covariance:
                self._covariance[stem] += outer
                self._power[stem] += power
            else:
                self._covariance[stem], self._power[stem] = outer, power
        self._counted_frames = first_frame + new + len(mixture)

    def finish(self) -> None:
        """Turns the sums into each stem's spatial covariance, in norbert's scaled units.

        Bins where no stem ever has power (Spleeter's above 11 kHz) have a zero covariance, so
        the filter's output there is zero: they are left out of the filtering.
        """
        self._scale = max(1.0, self._peak / SCALE_PEAK)
        square = self._scale**2
        self._active = np.sum(list(self._power.values()), axis=0) > 0
        self._covariances = {
            stem: (sums / square / (EPSILON + self._power[stem] / square)[:, None, None])[
                self._active
            ]
            for stem, sums in self._covariance.items()
        }

    def filter(
        self, mixture: np.ndarray, magnitudes: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """One segment's filtered stems: complex64 (frames, bins, 2) each."""
        if self._covariances is None:
            raise RuntimeError("finish() gathers the statistics before filtering")
        active = self._active
        x = mixture[:, active].astype(np.complex128) / self._scale
        estimates = _soft_masks(x, {stem: magnitudes[stem][:, active] for stem in self.stems})
        powers = {stem: _power(y) for stem, y in estimates.items()}
        # The mixture's covariance sum_k p_k R_k + sqrt(eps) I, entry by entry (t, f).
        mix = [[sum(powers[stem] * self._covariances[stem][None, :, i, j] for stem in self.stems)
                for j in range(2)] for i in range(2)]  # fmt: skip
        mix[0][0] = mix[0][0] + REGULARISATION
        mix[1][1] = mix[1][1] + REGULARISATION
        # z = mix^-1 x by the closed form (norbert._invert: no regularisation of its own).
        determinant = mix[0][0] * mix[1][1] - mix[0][1] * mix[1][0]
        z0 = (mix[1][1] * x[..., 0] - mix[0][1] * x[..., 1]) / determinant
        z1 = (mix[0][0] * x[..., 1] - mix[1][0] * x[..., 0]) / determinant
        filtered = {}
        for stem in self.stems:
            r = self._covariances[stem][None]
            output = np.zeros(mixture.shape, np.complex64)
            gain = powers[stem] * self._scale
            output[:, active, 0] = gain * (r[..., 0, 0] * z0 + r[..., 0, 1] * z1)
            output[:, active, 1] = gain * (r[..., 1, 0] * z0 + r[..., 1, 1] * z1)
            filtered[stem] = output
        return filtered


def _soft_masks(mixture: np.ndarray, magnitudes: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """norbert.softmask: each stem's share of the summed magnitudes, times the mixture."""
    total = sum(magnitudes.values())
    return {stem: (v / (EPSILON + total)) * mixture for stem, v in magnitudes.items()}


def _power(y: np.ndarray) -> np.ndarray:
    """norbert's power spectrogram: mean over the channels of |y|^2, float64 (frames, bins)."""
    return (y.real**2 + y.imag**2).mean(axis=-1, dtype=np.float64)
