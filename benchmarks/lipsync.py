"""Lipsync benchmark: the service end to end against the bare engine work, per engine.

`wav2lip`: the official network on the official checkpoint when `models/wav2lip/` holds it,
else random weights of the official shapes (the cost is the same); the bare figure is the
generator's forward passes alone on batches of prepared inputs. `mouth_motion`: the bare figure
is the engine's own per-frame work (landmarks, warp) called directly. The service figure is a
lipsync server on a loopback port (PNG frames in and out, models already loaded, as in
production). Writes out/lipsync_bench.json.
"""

from __future__ import annotations

import json
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
import torch
from remind.v1 import lipsync_pb2, lipsync_pb2_grpc, media_pb2
from skimage import data

from services.lipsync.config import LipSyncSettings
from services.lipsync.engines.mouth_motion import MouthMotionEngine
from services.lipsync.server import start
from services.lipsync.wav2lip import files
from services.lipsync.wav2lip.checkpoints import save_training_checkpoint
from services.lipsync.wav2lip.models import Wav2LipModel
from services.lipsync.wav2lip.network import Wav2Lip
from services.shared import images
from services.shared.model_files import check_files

FPS = 25.0
FRAMES = {"wav2lip": 16, "mouth_motion": 50}
BATCH = 8
TEXT = "Every frame of this video follows the voice that speaks these words."
REPOSITORY = Path(__file__).resolve().parents[1]


def models_dir(work: Path) -> tuple[Path, str]:
    official = REPOSITORY / "models"
    try:
        check_files(official, files.files_for("wav2lip_gan"))
        return official, "official wav2lip_gan.pth"
    except Exception:  # noqa: BLE001 - no usable official file: random weights cost the same
        save_training_checkpoint(Wav2Lip(), work / files.CHECKPOINTS["wav2lip_gan"].path)
        return work, "random (official format)"


def speech_wav(work: Path) -> bytes:
    path = work / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(path), TEXT], check=True)
    return path.read_bytes()


def service_fps(stub: lipsync_pb2_grpc.LipSyncServiceStub, engine: str, wav: bytes) -> float:
    audio_format = media_pb2.AudioFormat(encoding=media_pb2.AUDIO_ENCODING_CONTAINER)
    features = stub.PrepareAudio(
        iter([
            lipsync_pb2.PrepareAudioRequest(
                config=lipsync_pb2.PrepareAudioConfig(engine=engine, format=audio_format)
            ),
            lipsync_pb2.PrepareAudioRequest(chunk=media_pb2.AudioChunk(data=wav)),
        ]),
        timeout=60,
    ).features  # fmt: skip
    frame = images.encode_image(data.astronaut(), "png")
    count = FRAMES[engine]

    def requests():
        yield lipsync_pb2.SyncLipsRequest(
            config=lipsync_pb2.LipSyncConfig(features=features, fps=FPS)
        )
        for index in range(count):
            image = media_pb2.EncodedImage(data=frame, format=media_pb2.IMAGE_FORMAT_PNG)
            yield lipsync_pb2.SyncLipsRequest(frame=media_pb2.Frame(index=index, image=image))

    started = time.perf_counter()
    responses = list(stub.SyncLips(requests(), timeout=600))
    elapsed = time.perf_counter() - started
    assert len(responses) == count and all(r.face_found for r in responses)
    return count / elapsed


def bare_wav2lip_fps(models: Path) -> float:
    model = Wav2LipModel(models / files.CHECKPOINTS["wav2lip_gan"].path)
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, (96, 96, 3), dtype=np.uint8) for _ in range(BATCH)]
    mels = [rng.uniform(-4, 4, (80, 16)).astype(np.float32) for _ in range(BATCH)]
    model.generate(crops[:1], mels[:1])  # warm-up
    count = FRAMES["wav2lip"]
    started = time.perf_counter()
    for _ in range(count // BATCH):
        model.generate(crops, mels)
    return count / (time.perf_counter() - started)


def bare_mouth_motion_fps(work: Path) -> float:
    import soundfile
    from scipy import signal

    path = work / "speech.wav"
    samples, rate = soundfile.read(path, dtype="float32")
    samples = signal.resample_poly(samples, 16000, rate).astype(np.float32)
    engine = MouthMotionEngine()
    engine.load()
    syncer = engine.start_stream(engine.prepare_audio(samples), FPS)
    frame = data.astronaut()
    syncer.process(frame)  # warm-up
    count = FRAMES["mouth_motion"]
    started = time.perf_counter()
    for _ in range(count):
        syncer.process(frame)
    return count / (time.perf_counter() - started)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="lipsync-bench-") as folder:
        work = Path(folder)
        models, weights = models_dir(work)
        wav = speech_wav(work)
        running = start(
            LipSyncSettings(port=0, models_dir=str(models), batch_max_size=BATCH)
        )
        try:
            with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                stub = lipsync_pb2_grpc.LipSyncServiceStub(channel)
                service_fps(stub, "mouth_motion", wav)  # warm-up: models, dlib, first pass
                results = {
                    engine: {"service_fps": service_fps(stub, engine, wav)}
                    for engine in ("wav2lip", "mouth_motion")
                }
        finally:
            running.stop()
        results["wav2lip"]["bare_fps"] = bare_wav2lip_fps(models)
        results["mouth_motion"]["bare_fps"] = bare_mouth_motion_fps(work)
    for engine, figures in results.items():
        figures["ratio"] = figures["service_fps"] / figures["bare_fps"]
        print(
            f"{engine:13s} service {figures['service_fps']:6.2f} frames/s   "
            f"bare {figures['bare_fps']:6.2f} frames/s   ratio {figures['ratio']:.0%}"
        )
    report = {
        "machine": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "wav2lip_weights": weights,
        "frame": "512x512 PNG (skimage astronaut)",
        "results": results,
    }
    out = REPOSITORY / "out"
    out.mkdir(exist_ok=True)
    (out / "lipsync_bench.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
