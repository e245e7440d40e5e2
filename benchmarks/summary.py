"""One table (and out/bench.json) from the figures the other benchmarks of this run wrote."""

import json
import platform
from pathlib import Path

OUT = Path("out")


def _load(name: str) -> dict:
    path = OUT / name
    return json.loads(path.read_text()) if path.exists() else {}


def rows() -> list[tuple[str, str, str]]:
    table = []
    gif = _load("gif_bench.json")
    if gif:
        table.append(
            (
                "GIF job end to end",
                f"{gif['gif_job_frames_per_second']} frames/s",
                f"job / engine alone {gif['job_over_engine_ratio']}x",
            )
        )
        if "signing_seconds" in gif:
            table.append(
                (
                    "Content Credentials signing, per GIF job",
                    f"{gif['signing_seconds'] * 1000:.0f} ms",
                    f"{gif['signing_share_of_job']:.1%} of the job",
                )
            )
    video = _load("video_bench.json")
    if video:
        table.append(
            (
                "MP4 job end to end",
                f"{video['pipelined_frames_per_second']} frames/s, "
                f"real-time factor {video['real_time_factor']}",
                f"sequential / pipelined {video['sequential_over_pipelined']}x",
            )
        )
    voice = _load("voice_bench.json")
    for engine, figures in voice.get("engines", {}).items():
        table.append(
            (
                f"voice {engine}, 60 s",
                f"real-time factor {figures['real_time_factor']}",
                f"SDR {figures['vocals_sdr_db']} dB",
            )
        )
    whole = voice.get("whole_process", {})
    if whole.get("speedup_wall"):
        table.append(
            (
                "voice spleeter vs `spleeter separate`",
                "whole process vs whole process, same weights and input",
                f"ours {whole['speedup_wall']}x faster (CPU time {whole['speedup_cpu']}x)",
            )
        )
    faceswap = _load("faceswap_engines.json")
    for result in faceswap.get("results", []):
        table.append(
            (
                f"SimSwap {result['model']} batch {result['batch']}",
                f"service {result['service_fps']} frames/s",
                f"service / bare forward {result['service_over_bare']}",
            )
        )
    batches = {(r["model"], r["batch"]): r["service_fps"] for r in faceswap.get("results", [])}
    for model in (224, 512):
        if (model, 1) in batches and (model, 4) in batches:
            table.append(
                (
                    f"SimSwap {model} batching gain",
                    "batch 4 vs batch 1",
                    f"{batches[(model, 4)] / batches[(model, 1)]:.2f}x",
                )
            )
    lipsync = _load("lipsync_bench.json")
    for engine, figures in lipsync.get("results", {}).items():
        table.append(
            (
                f"lipsync {engine}",
                f"service {figures['service_fps']:.1f} frames/s",
                f"service / in-process {figures['ratio']:.2f}",
            )
        )
    queue = _load("job_queue_bench.json")
    if queue:
        table += [
            (
                f"jobs/minute, {queue['load_jobs']} GIF jobs, 1 vs 2 replicas",
                f"{queue['jobs_per_minute_one_replica']} vs "
                f"{queue['jobs_per_minute_two_replicas']}",
                f"{queue['two_over_one']}x",
            ),
            (
                "kill -9 of a job's replica to the job running again",
                f"{queue['seconds_from_kill_to_resume']} s",
                "the lease (30 s) decides it",
            ),
            (
                "CreateGifJob",
                f"p50 {queue['create_ms_p50']} ms",
                f"queueing adds {queue['jetstream_publish_ms_p50']} + "
                f"{queue['saved_identity_write_ms_p50']} ms",
            ),
        ]
    return table


def main() -> None:
    table = rows()
    machine = f"{platform.machine()}, {__import__('os').cpu_count()} cores, CPU only"
    print(f"\nRe:Mind benchmark summary ({machine})")
    width = max(len(name) for name, _, _ in table) + 2
    for name, figure, ratio in table:
        print(f"{name:<{width}}{figure:<44}{ratio}")
    (OUT / "bench.json").write_text(
        json.dumps(
            {
                "machine": machine,
                "rows": [dict(zip(("what", "figure", "ratio"), row, strict=True)) for row in table],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
