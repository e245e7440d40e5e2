"""Voice benchmark: each engine's real-time factor on a 60 s recording, and our Spleeter path
against the official `spleeter separate` command on the same weights and input.

Our figures are measured through a voice server on a loopback port (gRPC, WAV in, PCM stems
out, model already loaded, as in production). The official command line runs TensorFlow in
its own virtualenv (spleeter pins TensorFlow 2.12.1 and Python < 3.12): set SPLEETER_CLI to its
`spleeter` executable (default /tmp/spleeter-venv/bin/spleeter, made by
`python3 -m venv /tmp/spleeter-venv && /tmp/spleeter-venv/bin/pip install spleeter==2.4.2`).
Its time is the command's wall time, start-up included, since that is what a user of it pays;
its separation alone is printed too. Writes out/voice_bench.json.
"""

import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import fast_bss_eval
import numpy as np
import soundfile

from services.voice.client import VoiceClient
from services.voice.config import VoiceSettings
from services.voice.engines.spleeter import packaged_model_dir
from services.voice.mixes import make_mix, wav_bytes
from services.voice.server import start

SECONDS = 60.0
RUNS = 2
DEFAULT_CLI = "/tmp/spleeter-venv/bin/spleeter"


def time_engine(client: VoiceClient, recording: bytes, engine: str) -> tuple[float, np.ndarray]:
    best, vocals = float("inf"), np.zeros((0, 2), np.float32)
    for _ in range(RUNS):
        started = time.perf_counter()
        result = client.separate(recording, engine=engine)
        best = min(best, time.perf_counter() - started)
        vocals = result.stems["vocals"]
    return best, vocals


def run_official_cli(recording: Path, work: Path) -> dict:
    cli = os.environ.get("SPLEETER_CLI", DEFAULT_CLI)
    if not Path(cli).exists():
        return {"available": False, "reason": f"{cli} not found (TensorFlow cannot share our venv)"}
    models = work / "models"
    shutil.copytree(packaged_model_dir(), models / "2stems")
    env = {**os.environ, "MODEL_PATH": str(models), "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = [cli, "separate", "-p", "spleeter:2stems", "-o", str(work / "out"), str(recording)]
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        return {"available": False, "reason": result.stderr.strip().splitlines()[-1:]}
    vocals, _ = soundfile.read(work / "out" / recording.stem / "vocals.wav", dtype="float32")
    return {"available": True, "wall_seconds": wall, "vocals": vocals}


def main() -> None:
    mix = make_mix("en-us", SECONDS)
    recording = wav_bytes(mix.mixture)
    settings = VoiceSettings(port=0, cache_dir=str(Path("out/voice-cache").resolve()))
    running = start(settings, store=None)
    ours_vocals = np.zeros((0, 2), np.float32)
    figures: dict = {"input_seconds": SECONDS, "machine": f"{platform.machine()}, "
                     f"{os.cpu_count()} cores", "engines": {}}  # fmt: skip
    try:
        with VoiceClient(f"127.0.0.1:{running.port}") as client:
            for engine in ("spleeter", "spectral"):
                seconds, vocals = time_engine(client, recording, engine)
                n = min(len(vocals), len(mix.voice))
                sdr = fast_bss_eval.sdr(mix.voice[:n].mean(1)[None], vocals[:n].mean(1)[None])[0]
                figures["engines"][engine] = {
                    "seconds": round(seconds, 2),
                    "real_time_factor": round(seconds / SECONDS, 4),
                    "vocals_sdr_db": round(float(sdr), 2),
                }
                if engine == "spleeter":
                    ours_vocals = vocals
    finally:
        running.stop()
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "mix.wav"
        path.write_bytes(recording)
        official = run_official_cli(path, Path(work))
    if official["available"]:
        ours = figures["engines"]["spleeter"]["seconds"]
        reference = official.pop("vocals")
        n = min(len(reference), len(ours_vocals))
        difference = reference[:n] - ours_vocals[:n]
        agreement = 10 * np.log10(np.sum(reference[:n] ** 2) / (np.sum(difference**2) + 1e-20))
        figures["official_cli"] = {
            "wall_seconds": round(official["wall_seconds"], 2),
            "speedup_of_ours": round(official["wall_seconds"] / ours, 2),
            "agreement_snr_db": round(float(agreement), 1),
        }
    else:
        figures["official_cli"] = {"available": False, "reason": official["reason"]}
    print(f"voice separation of a {SECONDS:.0f} s recording ({figures['machine']}):")
    for engine, row in figures["engines"].items():
        rtf, sdr = row["real_time_factor"], row["vocals_sdr_db"]
        print(f"  {engine:9s} {row['seconds']:6.2f} s  real-time factor {rtf:.3f}  "
              f"vocals SDR {sdr:5.2f} dB")  # fmt: skip
    cli = figures["official_cli"]
    if "wall_seconds" in cli:
        print(f"  official `spleeter separate` {cli['wall_seconds']:.2f} s: ours is "
              f"{cli['speedup_of_ours']:.2f}x faster; outputs agree to "
              f"{cli['agreement_snr_db']:.1f} dB SNR (16-bit WAV rounding)")  # fmt: skip
    else:
        print(f"  official `spleeter separate`: unavailable ({cli['reason']})")
    Path("out").mkdir(exist_ok=True)
    Path("out/voice_bench.json").write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
