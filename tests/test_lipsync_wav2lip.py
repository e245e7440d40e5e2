"""Wav2Lip as published: the mel numbers, the network against a transcription of the official
module, the official checkpoint formats, S3FD, and the engine on random weights."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from scipy import signal
from skimage import data
from torch import nn

from services.lipsync.config import LipSyncSettings
from services.lipsync.engines.wav2lip import Wav2LipEngine
from services.lipsync.wav2lip import files
from services.lipsync.wav2lip.checkpoints import load_state_dict_file, save_training_checkpoint
from services.lipsync.wav2lip.mel import mel_window, melspectrogram, window_start
from services.lipsync.wav2lip.models import load_generator, network_inputs
from services.lipsync.wav2lip.network import Wav2Lip
from services.lipsync.wav2lip.s3fd import NMS_IOU, S3FD, S3FDDetector, best_face, decode_detections
from services.lipsync.wav2lip.tracking import BoxSmoother, padded_box
from services.shared.errors import EngineNotReady, InvalidInput
from services.shared.face_geometry import non_maximum_suppression


@pytest.fixture(scope="module")
def speech_16k(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    path = tmp_path_factory.mktemp("voice") / "speech.wav"
    subprocess.run(
        ["espeak-ng", "-w", str(path), "The quick brown fox jumps over the lazy dog."], check=True
    )
    samples, rate = soundfile.read(path, dtype="float64")
    return signal.resample_poly(samples, 16000, rate)


# ---------------------------------------------------------------- mel spectrogram from formulas


def _slaney_hz_to_mel(hz: np.ndarray) -> np.ndarray:
    # Slaney's Auditory Toolbox scale: linear below 1 kHz (66.67 Hz per mel), log above.
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / (200.0 / 3)
    log_step = np.log(6.4) / 27.0
    return np.where(hz >= 1000.0, 15.0 + np.log(np.maximum(hz, 1e-9) / 1000.0) / log_step, linear)


def _slaney_mel_to_hz(mel: np.ndarray) -> np.ndarray:
    log_step = np.log(6.4) / 27.0
    return np.where(mel >= 15.0, 1000.0 * np.exp(log_step * (mel - 15.0)), mel * 200.0 / 3)


def _formula_mel(samples: np.ndarray) -> np.ndarray:
    """Wav2Lip's audio.py written out: pre-emphasis, reflect-padded periodic-Hann STFT,
    area-normalised triangular Slaney filters, dB, symmetric clipping normalisation."""
    emphasised = np.append(samples[0], samples[1:] - 0.97 * samples[:-1])
    padded = np.pad(emphasised, 400, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(800) / 800)
    frames = 1 + (len(padded) - 800) // 200
    stft = np.stack(
        [np.abs(np.fft.rfft(padded[i * 200 : i * 200 + 800] * window)) for i in range(frames)],
        axis=1,
    )
    edges = _slaney_mel_to_hz(
        np.linspace(_slaney_hz_to_mel(55.0), _slaney_hz_to_mel(7600.0), 80 + 2)
    )
    bins = np.arange(401) * 16000 / 800
    filters = np.zeros((80, 401))
    for band in range(80):
        low, centre, high = edges[band : band + 3]
        rising = (bins - low) / (centre - low)
        falling = (high - bins) / (high - centre)
        filters[band] = np.maximum(0, np.minimum(rising, falling)) * 2.0 / (high - low)
    decibels = 20 * np.log10(np.maximum(1e-5, filters @ stft)) - 20
    return np.clip(8 * (decibels + 100) / 100 - 4, -4, 4)


def test_mel_spectrogram_matches_the_official_formulas(speech_16k: np.ndarray) -> None:
    ours = melspectrogram(speech_16k)
    expected = _formula_mel(speech_16k)
    assert ours.shape == (80, 1 + len(speech_16k) // 200)
    assert ours.dtype == np.float32
    assert np.abs(ours - expected).max() < 2e-3
    # Speech reaches well into the range and silence sits at the floor.
    assert ours.max() > 0 and ours.min() == pytest.approx(-4.0)


def test_mel_of_silence_is_the_floor() -> None:
    assert np.all(melspectrogram(np.zeros(16000)) == -4.0)


def test_mel_windows_follow_the_official_index() -> None:
    mel = np.arange(80 * 100, dtype=np.float32).reshape(80, 100)
    for fps in (25.0, 29.97, 30.0):
        for index in (0, 1, 7, 13):
            start = int(index * 80.0 / fps)
            assert window_start(index, fps) == start
            assert np.array_equal(mel_window(mel, index, fps), mel[:, start : start + 16])
    # Past the last full window: the last 16 columns (official); past the end: silence.
    assert np.array_equal(mel_window(mel, 29, 25.0), mel[:, 84:])
    assert np.all(mel_window(mel, 40, 25.0) == -4.0)


# ------------------------------------------------ the network against the official module tree


class _OfficialConv(nn.Module):
    def __init__(self, cin, cout, kernel_size, stride, padding, residual=False):  # noqa: ANN001
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.Conv2d(cin, cout, kernel_size, stride, padding), nn.BatchNorm2d(cout)
        )
        self.act = nn.ReLU()
        self.residual = residual

    def forward(self, x):  # noqa: ANN001, ANN201
        out = self.conv_block(x)
        if self.residual:
            out += x
        return self.act(out)


class _OfficialTranspose(nn.Module):
    def __init__(self, cin, cout, kernel_size, stride, padding, output_padding=0):  # noqa: ANN001
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, kernel_size, stride, padding, output_padding),
            nn.BatchNorm2d(cout),
        )
        self.act = nn.ReLU()

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.act(self.conv_block(x))


class _OfficialWav2Lip(nn.Module):
    """models/wav2lip.py of Rudrabha/Wav2Lip, layer by layer, as an independent reference."""

    def __init__(self) -> None:
        super().__init__()
        C, T = _OfficialConv, _OfficialTranspose
        self.face_encoder_blocks = nn.ModuleList([
            nn.Sequential(C(6, 16, 7, 1, 3)),
            nn.Sequential(C(16, 32, 3, 2, 1), C(32, 32, 3, 1, 1, True), C(32, 32, 3, 1, 1, True)),
            nn.Sequential(C(32, 64, 3, 2, 1), C(64, 64, 3, 1, 1, True), C(64, 64, 3, 1, 1, True),
                          C(64, 64, 3, 1, 1, True)),
            nn.Sequential(C(64, 128, 3, 2, 1), C(128, 128, 3, 1, 1, True),
                          C(128, 128, 3, 1, 1, True)),
            nn.Sequential(C(128, 256, 3, 2, 1), C(256, 256, 3, 1, 1, True),
                          C(256, 256, 3, 1, 1, True)),
            nn.Sequential(C(256, 512, 3, 2, 1), C(512, 512, 3, 1, 1, True)),
            nn.Sequential(C(512, 512, 3, 1, 0), C(512, 512, 1, 1, 0)),
        ])  # fmt: skip
        self.audio_encoder = nn.Sequential(
            C(1, 32, 3, 1, 1), C(32, 32, 3, 1, 1, True), C(32, 32, 3, 1, 1, True),
            C(32, 64, 3, (3, 1), 1), C(64, 64, 3, 1, 1, True), C(64, 64, 3, 1, 1, True),
            C(64, 128, 3, 3, 1), C(128, 128, 3, 1, 1, True), C(128, 128, 3, 1, 1, True),
            C(128, 256, 3, (3, 2), 1), C(256, 256, 3, 1, 1, True),
            C(256, 512, 3, 1, 0), C(512, 512, 1, 1, 0),
        )  # fmt: skip
        self.face_decoder_blocks = nn.ModuleList([
            nn.Sequential(C(512, 512, 1, 1, 0)),
            nn.Sequential(T(1024, 512, 3, 1, 0), C(512, 512, 3, 1, 1, True)),
            nn.Sequential(T(1024, 512, 3, 2, 1, 1), C(512, 512, 3, 1, 1, True),
                          C(512, 512, 3, 1, 1, True)),
            nn.Sequential(T(768, 384, 3, 2, 1, 1), C(384, 384, 3, 1, 1, True),
                          C(384, 384, 3, 1, 1, True)),
            nn.Sequential(T(512, 256, 3, 2, 1, 1), C(256, 256, 3, 1, 1, True),
                          C(256, 256, 3, 1, 1, True)),
            nn.Sequential(T(320, 128, 3, 2, 1, 1), C(128, 128, 3, 1, 1, True),
                          C(128, 128, 3, 1, 1, True)),
            nn.Sequential(T(160, 64, 3, 2, 1, 1), C(64, 64, 3, 1, 1, True),
                          C(64, 64, 3, 1, 1, True)),
        ])  # fmt: skip
        self.output_block = nn.Sequential(
            C(80, 32, 3, 1, 1), nn.Conv2d(32, 3, kernel_size=1, stride=1, padding=0), nn.Sigmoid()
        )

    def forward(self, audio_sequences, face_sequences):  # noqa: ANN001, ANN201
        audio_embedding = self.audio_encoder(audio_sequences)
        feats = []
        x = face_sequences
        for f in self.face_encoder_blocks:
            x = f(x)
            feats.append(x)
        x = audio_embedding
        for f in self.face_decoder_blocks:
            x = f(x)
            x = torch.cat((x, feats[-1]), dim=1)
            feats.pop()
        return self.output_block(x)


def _randomised(network: nn.Module, seed: int) -> nn.Module:
    """Random weights and random batch-norm statistics, so every buffer matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in network.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            values = torch.randn(tensor.shape, generator=generator)
            if name.endswith("running_var"):
                values = values.abs() + 0.5
            elif name.endswith(".weight") and tensor.ndim == 1:
                values = 1.0 + 0.1 * values
            else:
                values = values * 0.05
            tensor.copy_(values)
    return network.eval()


@pytest.fixture(scope="module")
def random_wav2lip() -> Wav2Lip:
    return _randomised(Wav2Lip(), seed=1)


def _inputs(seed: int, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    mels = torch.rand((batch, 1, 80, 16), generator=generator) * 8 - 4
    faces = torch.rand((batch, 6, 96, 96), generator=generator)
    return mels, faces


def test_network_equals_the_official_module_on_equal_weights(random_wav2lip: Wav2Lip) -> None:
    official = _OfficialWav2Lip().eval()
    assert set(official.state_dict()) == set(random_wav2lip.state_dict())
    official.load_state_dict(random_wav2lip.state_dict(), strict=True)
    mels, faces = _inputs(seed=2)
    with torch.no_grad():
        ours, theirs = random_wav2lip(mels, faces), official(mels, faces)
    assert ours.shape == (2, 3, 96, 96)
    assert (ours - theirs).abs().max().item() <= 1e-4
    assert ours.std().item() > 1e-3  # not a constant output


def test_network_inputs_are_the_official_masked_and_reference_crops() -> None:
    crop = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    faces = network_inputs([crop])
    assert faces.shape == (1, 6, 96, 96) and faces.dtype == np.float32
    assert np.all(faces[0, :3, 48:] == 0)
    assert np.allclose(faces[0, :3, :48], crop[:48].transpose(2, 0, 1) / 255.0)
    assert np.allclose(faces[0, 3:], crop.transpose(2, 0, 1) / 255.0)


@pytest.mark.parametrize("data_parallel", [False, True])
def test_official_checkpoints_load_with_and_without_the_module_prefix(
    tmp_path: Path, random_wav2lip: Wav2Lip, data_parallel: bool
) -> None:
    path = tmp_path / "wav2lip_gan.pth"
    save_training_checkpoint(random_wav2lip, path, data_parallel=data_parallel)
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"state_dict", "optimizer", "global_step", "global_epoch"}
    assert all(key.startswith("module.") == data_parallel for key in raw["state_dict"])
    loaded = load_generator(path)
    mels, faces = _inputs(seed=3)
    with torch.no_grad():
        assert torch.equal(loaded(mels, faces), random_wav2lip(mels, faces))


def test_a_checkpoint_with_missing_or_foreign_keys_is_refused(
    tmp_path: Path, random_wav2lip: Wav2Lip
) -> None:
    state = dict(random_wav2lip.state_dict())
    state.pop("output_block.1.weight")
    state["face_encoder_blocks.0.0.extra"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(EngineNotReady, match="missing.*unexpected"):
        load_generator(path)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(EngineNotReady):
        load_generator(garbage)


# ---------------------------------------------------------------------------------------- S3FD

# The parameter names of the official net_s3fd.py (and of s3fd-619a316812.pth).
S3FD_KEYS = {
    f"{layer}.{kind}"
    for layer in (
        "conv1_1 conv1_2 conv2_1 conv2_2 conv3_1 conv3_2 conv3_3 conv4_1 conv4_2 conv4_3 "
        "conv5_1 conv5_2 conv5_3 fc6 fc7 conv6_1 conv6_2 conv7_1 conv7_2 "
        "conv3_3_norm_mbox_conf conv3_3_norm_mbox_loc conv4_3_norm_mbox_conf "
        "conv4_3_norm_mbox_loc conv5_3_norm_mbox_conf conv5_3_norm_mbox_loc fc7_mbox_conf "
        "fc7_mbox_loc conv6_2_mbox_conf conv6_2_mbox_loc conv7_2_mbox_conf conv7_2_mbox_loc"
    ).split()
    for kind in ("weight", "bias")
} | {"conv3_3_norm.weight", "conv4_3_norm.weight", "conv5_3_norm.weight"}


def test_s3fd_has_the_official_parameters_and_loads_a_plain_state_dict(tmp_path: Path) -> None:
    network = S3FD()
    assert set(network.state_dict()) == S3FD_KEYS
    assert network.state_dict()["conv3_3_norm.weight"].eq(10).all()
    path = tmp_path / "s3fd.pth"
    torch.manual_seed(4)
    torch.save(_randomised(S3FD(), seed=4).state_dict(), path)
    detector = S3FDDetector(path, torch.device("cpu"), max_side=160)
    for key, value in load_state_dict_file(path).items():
        assert torch.equal(detector.network.state_dict()[key], value)
    with torch.no_grad():
        outputs = detector.network(torch.zeros(1, 3, 128, 128))
    shapes = [tuple(output.shape[1:]) for output in outputs]
    assert shapes[0] == (2, 32, 32) and shapes[1] == (4, 32, 32)  # stride 4, max-out applied
    # fc6 pads by 3 (official), so the deepest maps are larger than 128 / stride.
    assert shapes[-2] == (2, 2, 2)


# No S3FD weights can be fetched here, and random ones give no detection that must or must not
# happen. These weights make the official network a known detector instead: the first head
# (conv3_3, stride 4, 16 px anchors) scores "face" wherever the frame is brighter than
# BRIGHT_ABOVE over the pixel means, every other head scores background, boxes are the anchors.
BRIGHT_ABOVE = 60.0


def _bright_patch_s3fd() -> dict[str, torch.Tensor]:
    state = {name: torch.zeros_like(tensor) for name, tensor in S3FD().state_dict().items()}
    # conv1_1 -> conv3_3: channel 0 carries the mean brightness over the threshold, unchanged.
    state["conv1_1.weight"][0, :, 1, 1] = 1.0 / 3
    state["conv1_1.bias"][0] = -BRIGHT_ABOVE
    for layer in ("conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3"):
        state[f"{layer}.weight"][0, 0, 1, 1] = 1.0
    # L2Norm turns any positive channel 0 into 10, the official scale of conv3_3_norm.
    for norm, scale in (("conv3_3_norm", 10.0), ("conv4_3_norm", 8.0), ("conv5_3_norm", 5.0)):
        state[f"{norm}.weight"].fill_(scale)
    # Face score 10 - 5 = +5 over the bright, -5 elsewhere, against a background score of 0.
    state["conv3_3_norm_mbox_conf.weight"][3, 0, 1, 1] = 1.0
    state["conv3_3_norm_mbox_conf.bias"][3] = -5.0
    for head in ("conv4_3_norm", "conv5_3_norm", "fc7", "conv6_2", "conv7_2"):
        state[f"{head}_mbox_conf.bias"][0] = 5.0
    return state


@pytest.fixture(scope="module")
def bright_patch_detector(tmp_path_factory: pytest.TempPathFactory) -> S3FDDetector:
    path = tmp_path_factory.mktemp("s3fd") / "s3fd.pth"
    torch.save(_bright_patch_s3fd(), path)
    # As the engine runs it: the 512 px photo is searched at 160 px, boxes scaled back.
    return S3FDDetector(path, torch.device("cpu"), max_side=160)


def _dimmed_astronaut() -> np.ndarray:
    """The astronaut photo, dimmed until no pixel is bright enough to fire a detection."""
    return (data.astronaut() * 0.25).astype(np.uint8)


def test_s3fd_finds_the_patch_its_weights_detect_in_frame_coordinates(
    bright_patch_detector: S3FDDetector,
) -> None:
    frame = _dimmed_astronaut()
    left, top, side = 300, 120, 96  # where the "face" is, in the 512 px frame
    frame[top : top + side, left : left + side] = 255
    face = bright_patch_detector.detect(frame)
    assert face is not None, "the patch the weights respond to was not detected"
    assert face.score > 0.99
    centre_x, centre_y = (face.x1 + face.x2) / 2, (face.y1 + face.y2) / 2
    assert left <= centre_x <= left + side and top <= centre_y <= top + side, face
    # One 16 px anchor at the 160 px search size, scaled back to the 512 px frame.
    scale = 512 / 160
    assert face.x2 - face.x1 == pytest.approx(16 * scale, rel=0.02)
    assert face.y2 - face.y1 == pytest.approx(16 * scale, rel=0.02)


def test_s3fd_finds_nothing_where_its_weights_detect_nothing(
    bright_patch_detector: S3FDDetector,
) -> None:
    assert bright_patch_detector.detect(_dimmed_astronaut()) is None
    assert bright_patch_detector.detect(np.zeros((240, 320, 3), np.uint8)) is None


def test_s3fd_decoding_recovers_anchor_boxes_and_suppresses_overlaps() -> None:
    # Stride 8 level (index 1): one confident anchor at row 2, column 3 with zero offsets.
    outputs = []
    for level, size in enumerate((16, 8, 4, 2, 1, 1)):
        classes = torch.zeros(1, 2, size, size)
        classes[0, 0] = 5.0  # background everywhere
        if level == 1:
            classes[0, :, 2, 3] = torch.tensor([-5.0, 5.0])
        outputs += [classes, torch.zeros(1, 4, size, size)]
    candidates = decode_detections(outputs)[0]
    assert len(candidates) == 1
    # Anchor centre (8/2 + 3*8, 8/2 + 2*8) = (28, 20), side 4 * 8 = 32.
    assert np.allclose(candidates[0, :4], [12, 4, 44, 36])
    face = best_face(candidates)
    assert face is not None and face.score > 0.99
    boxes = np.array([[0, 0, 10, 10, 0.9], [1, 1, 11, 11, 0.8], [50, 50, 60, 60, 0.7]])
    kept = non_maximum_suppression(boxes[:, :4], boxes[:, 4], NMS_IOU)
    assert boxes[kept, 4].tolist() == [0.9, 0.7]


# -------------------------------------------------------------------------- tracking, engine


def test_boxes_are_padded_and_smoothed_over_a_centred_window() -> None:
    assert padded_box((10, 20, 50, 95), (100, 100, 3)) == (10, 20, 50, 100)
    smoother = BoxSmoother()
    for x in (0, 10, 20, None, 40):
        smoother.add(None if x is None else (x, 0, x + 10, 10))
    # The frame two before the newest (x=20) averages its present neighbours 0, 10, 20, 40.
    assert smoother.smoothed(2) == pytest.approx((17.5, 0, 27.5, 10))
    assert smoother.smoothed(1) is None


@pytest.fixture(scope="module")
def wav2lip_engine(tmp_path_factory: pytest.TempPathFactory, random_wav2lip: Wav2Lip):
    models = tmp_path_factory.mktemp("models")
    save_training_checkpoint(random_wav2lip, models / files.CHECKPOINTS["wav2lip_gan"].path)
    engine = Wav2LipEngine(LipSyncSettings(models_dir=str(models), batch_max_size=4))
    engine.load()
    yield engine
    engine.close()


def test_engine_syncs_faces_deterministically_and_passes_faceless_frames(
    wav2lip_engine: Wav2LipEngine, speech_16k: np.ndarray
) -> None:
    features = wav2lip_engine.prepare_audio(speech_16k.astype(np.float32))
    assert features.duration_seconds == pytest.approx(len(speech_16k) / 16000)
    face = data.astronaut()
    blank = np.full_like(face, 90)
    frames = [face, face, blank, face, face]

    def run() -> list:
        syncer = wav2lip_engine.start_stream(features, 25.0)
        pending = [syncer.submit(frame) for frame in frames]
        syncer.finish()
        return [future.result(timeout=60) for future in pending]

    first, second = run(), run()
    assert [frame.face_found for frame in first] == [True, True, False, True, True]
    assert np.array_equal(first[2].image, blank)
    for a, b in zip(first, second, strict=True):
        assert np.array_equal(a.image, b.image)
    x, y, width, height = first[0].box
    changed = np.abs(first[0].image.astype(int) - face).sum(axis=2) > 0
    assert changed.any()
    rows, columns = np.nonzero(changed)
    assert rows.min() >= y and rows.max() < y + height
    assert columns.min() >= x and columns.max() < x + width


def test_engine_refuses_features_of_another_engine(wav2lip_engine: Wav2LipEngine) -> None:
    from services.lipsync.engines.base import AudioFeatures

    with pytest.raises(InvalidInput, match="mouth_motion"):
        wav2lip_engine.start_stream(AudioFeatures("mouth_motion", b"x", 1.0), 25.0)
    with pytest.raises(InvalidInput, match="corrupt"):
        wav2lip_engine.start_stream(AudioFeatures("wav2lip", b"not npz", 1.0), 25.0)


def test_engine_without_weights_is_not_ready(tmp_path: Path) -> None:
    engine = Wav2LipEngine(LipSyncSettings(models_dir=str(tmp_path)))
    with pytest.raises(EngineNotReady, match="wav2lip_gan.pth is missing"):
        engine.load()
