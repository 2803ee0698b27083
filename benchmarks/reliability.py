"""Reliability under abuse, the slow cases: bad inputs through the CLI, kill -9 at many points of an export,
concurrent exports to one directory, 8 threads on one runtime, very large photos. Prints one Markdown table per
part and the summary docs/reliability.md quotes.

    python benchmarks/reliability.py [--quick] [--out /tmp/reliability]

Every case is a real subprocess of the installed CLI on random:0 at 224² (the photos are real COCO images from
../shared/data). Outcomes: "clean" (exit 2 or 1 with one `error:`/`failed:` line and nothing half-written),
"traceback", "hang" (timeout), "data lost" (a previous artifact damaged), "accepted" (exit 0 where an error was due).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
EVAL = SHARED / "coco" / "eval2017" / "images"
SIZE = "224"


def cli(*args, timeout=300, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "groupvit_edge.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd, stdin=subprocess.DEVNULL)


# ---------------------------------------------------------------------------------------------- bad inputs

def bad_input_cases(work: Path, artifact: Path) -> list[tuple[str, list]]:
    """(name, CLI arguments) of inputs a careless user or an attacker gives; every one must end cleanly."""
    photo = sorted(EVAL.glob("*.jpg"))[0]
    junk = work / "junk"
    junk.mkdir(exist_ok=True)
    (junk / "empty.jpg").write_bytes(b"")
    (junk / "text.jpg").write_text("hello")
    (junk / "truncated.jpg").write_bytes(photo.read_bytes()[:2000])
    if not (junk / "fifo.jpg").exists():
        os.mkfifo(junk / "fifo.jpg")
    broken = {}
    for name, edit in _manifest_edits().items():
        copy = work / f"manifest-{name}"
        if not copy.exists():
            shutil.copytree(artifact, copy)
            data = json.loads((copy / "manifest.json").read_text())
            edit(data)
            (copy / "manifest.json").write_text(json.dumps(data))
        broken[name] = copy
    flipped = work / "flipped"
    if not flipped.exists():
        shutil.copytree(artifact, flipped)
        data = bytearray((flipped / "image.onnx").read_bytes())
        data[-4000] ^= 0x40
        (flipped / "image.onnx").write_bytes(bytes(data))
    out = work / "out"
    cases = [
        ("export: missing model", ["export", "--model", work / "nope", "--out", out / "a"]),
        ("export: bad seed", ["export", "--model", "random:x", "--out", out / "a"]),
        ("export: unknown target", ["export", "--model", "random:0", "--target", "tflite", "--out", out / "a"]),
        ("export: size 10000", ["export", "--model", "random:0", "--image-size", "10000", "--out", out / "a"]),
        ("export: size 450", ["export", "--model", "random:0", "--image-size", "450", "--out", out / "a"]),
        ("export: size abc", ["export", "--model", "random:0", "--image-size", "abc", "--out", out / "a"]),
        ("export: calib dir missing", ["export", "--model", "random:0", "--target", "onnx-int8", "--calib-dir",
                                       work / "nope", "--out", out / "a"]),
        ("export: calib dir of junk", ["export", "--model", "random:0", "--target", "onnx-int8", "--calib-dir",
                                       work / "manifest-graphs-list", "--out", out / "a"]),
        ("export: calib count 0", ["export", "--model", "random:0", "--target", "onnx-int8", "--calib-count", "0",
                                   "--out", out / "a"]),
        ("export: max-drop nan", ["export", "--model", "random:0", "--target", "onnx-int8", "--max-drop", "nan",
                                  "--out", out / "a"]),
        ("export: option of another target", ["export", "--model", "random:0", "--batch-max", "4", "--out",
                                              out / "a"]),
        ("export: tensorrt here", ["export", "--model", "random:0", "--target", "trt-fp16", "--out", out / "a"]),
        ("export: tokenizer missing", ["export", "--model", "random:0", "--tokenizer", work / "nope.gz", "--out",
                                       out / "a"]),
        ("export: tokenizer junk", ["export", "--model", "random:0", "--tokenizer", junk / "text.jpg", "--out",
                                    out / "a"]),
        ("export: out is a file", ["export", "--model", "random:0", "--out", junk / "text.jpg"]),
        ("export: out holds photos", ["export", "--model", "random:0", "--out", junk]),
        ("export: empty labels", ["export", "--model", "random:0", "--labels", "", "--out", out / "a"]),
        ("segment: empty file", ["segment", artifact, junk / "empty.jpg", "--out", out / "s"]),
        ("segment: text as jpg", ["segment", artifact, junk / "text.jpg", "--out", out / "s"]),
        ("segment: truncated jpg", ["segment", artifact, junk / "truncated.jpg", "--out", out / "s"]),
        ("segment: fifo", ["segment", artifact, junk / "fifo.jpg", "--out", out / "s"]),
        ("segment: missing photo", ["segment", artifact, work / "nope.jpg", "--out", out / "s"]),
        ("segment: duplicate labels", ["segment", artifact, photo, "--labels", "cat,Cat", "--out", out / "s"]),
        ("segment: background label", ["segment", artifact, photo, "--labels", "background,cat", "--out", out / "s"]),
        ("segment: 300 labels", ["segment", artifact, photo, "--labels", ",".join(f"c{n}" for n in range(300)),
                                 "--out", out / "s"]),
        ("segment: long label", ["segment", artifact, photo, "--labels", " ".join(["word"] * 100), "--out",
                                 out / "s"]),
        ("segment: threads 0", ["segment", artifact, photo, "--threads", "0", "--out", out / "s"]),
        ("segment: unknown backend", ["segment", artifact, photo, "--backend", "tflite", "--out", out / "s"]),
        ("segment: flipped bit", ["segment", flipped, photo, "--out", out / "s"]),
        ("segment: not an artifact", ["segment", junk, photo, "--out", out / "s"]),
        ("drift: max-drop nan", ["drift", "--ref", artifact, "--candidate", artifact, "--max-drop", "nan"]),
        ("drift: margin -1", ["drift", "--ref", artifact, "--candidate", artifact, "--margin", "-1"]),
        ("drift: margin nan", ["drift", "--ref", artifact, "--candidate", artifact, "--margin", "nan"]),
        ("drift: prototypes:0", ["drift", "--ref", artifact, "--candidate", artifact, "--labels", "prototypes:0"]),
        ("drift: report into photos", ["drift", "--ref", artifact, "--candidate", artifact, "--images", photo,
                                       "--report", junk]),
        ("eval: limit 0", ["eval", artifact, "--images", EVAL, "--masks", EVAL, "--limit", "0"]),
        ("eval: jpeg masks", ["eval", artifact, "--images", photo, "--masks", EVAL]),
        ("bench: runs 0", ["bench", artifact, "--runs", "0"]),
        ("bench: batch 0", ["bench", artifact, "--batch", "0"]),
        ("doctor: flipped bit", ["doctor", "--artifact", flipped]),
    ]
    cases += [(f"segment: manifest {name}", ["segment", path, photo, "--out", out / "s"])
              for name, path in broken.items()]
    return cases


def _manifest_edits():
    def set_path(path, value):
        def edit(data):
            holder = data
            for key in path[:-1]:
                holder = holder[key]
            holder[path[-1]] = value
        return edit
    return {"graphs-list": set_path(["graphs"], ["image.onnx"]), "file-null": set_path(["graphs", "image", "file"], None),
            "file-outside": set_path(["graphs", "image", "file"], "../../etc/passwd"),
            "file-absolute": set_path(["graphs", "image", "file"], "/proc/self/environ"),
            "schema-abc": set_path(["schema_version"], "abc"), "schema-99": set_path(["schema_version"], 99),
            "height-abc": set_path(["preprocess", "height"], "abc"), "height-0": set_path(["preprocess", "height"], 0),
            "height-mismatch": set_path(["preprocess", "height"], 448), "stride-0": set_path(["preprocess", "stride"], [0, 1]),
            "std-0": set_path(["preprocess", "std"], [0, 0, 0]), "logit-scale": set_path(["logit_scale"], "x"),
            "dtype": set_path(["graphs", "text", "inputs", 0, "dtype"], "int33"),
            "vocabulary-outside": set_path(["vocabulary", "file"], "/etc/passwd"),
            "tokenizer-outside": set_path(["tokenizer", "dir"], "../../..")}


def classify(done: subprocess.CompletedProcess | None, expected_exit=(1, 2)) -> str:
    if done is None:
        return "hang"
    if "Traceback" in done.stderr:
        return "traceback"
    if done.returncode == 0:
        return "accepted"
    lines = done.stderr.strip().splitlines()
    if done.returncode in expected_exit and lines and lines[-1].startswith(("error: ", "failed: ", "Error: ")):
        return "clean"
    return f"exit {done.returncode}"


def run_bad_inputs(work: Path, artifact: Path) -> dict:
    outcomes = {}
    for name, args in bad_input_cases(work, artifact):
        try:
            done = cli(*args, timeout=120)
        except subprocess.TimeoutExpired:
            done = None
        outcomes[name] = classify(done)
        leftovers = list((work / "out").glob("**/.*partial")) if (work / "out").exists() else []
        if leftovers:
            outcomes[name] += " (left a partial file)"
    return outcomes


# ---------------------------------------------------------------------------------------------- kill -9

def kill_during_export(work: Path, delays) -> list[tuple[float, str]]:
    """Export once, then re-export and kill -9 at each delay: the old artifact must survive intact, the next run
    must clean up and succeed."""
    out = work / "kill" / "art"
    done = cli("export", "--model", "random:0", "--image-size", SIZE, "--labels", "cat", "--out", out)
    assert done.returncode == 0, done.stderr
    rows = []
    for delay in delays:
        process = subprocess.Popen([sys.executable, "-m", "groupvit_edge.cli", "export", "--model", "random:0",
                                    "--image-size", SIZE, "--labels", "dog", "--out", str(out)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        intact = _artifact_ok(out)
        again = cli("export", "--model", "random:0", "--image-size", SIZE, "--labels", "cat", "--out", out)
        leftovers = [p.name for p in out.parent.iterdir() if p.name != "art"]
        outcome = "data lost" if not intact else ("clean" if again.returncode == 0 and not leftovers
                                                   else f"leftovers {leftovers}")
        rows.append((delay, outcome))
    return rows


def _artifact_ok(path: Path) -> bool:
    code = ("import sys; from groupvit_edge import runtimes; runtimes.open(sys.argv[1]); print('ok')")
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    return done.returncode == 0


def concurrent_exports(work: Path, count: int = 8) -> dict:
    out = work / "concurrent" / "art"
    processes = [subprocess.Popen([sys.executable, "-m", "groupvit_edge.cli", "export", "--model", "random:0",
                                   "--image-size", SIZE, "--out", str(out)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True) for _ in range(count)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in processes]
    refused = sum(code == 2 and "another groupvit-edge process" in error for code, error in results)
    succeeded = sum(code == 0 for code, _ in results)
    return {"exports": count, "succeeded": succeeded, "refused (writing in progress)": refused,
            "other": count - succeeded - refused, "artifact intact": _artifact_ok(out)}


# -------------------------------------------------------------------------------------------- threads

def threaded_calls(artifact_dir: Path, backend: str, threads: int = 8, rounds: int = 6) -> dict:
    from groupvit_edge.segmentation import Segmenter
    photos = sorted(EVAL.glob("*.jpg"))[:threads]
    options = {"cache_dir": ""} if backend == "openvino" else {}
    with Segmenter.open(artifact_dir, "person,dog,grass,sky", backend=backend, **options) as segmenter:
        expected = {photo: segmenter.segment(photo).labels for photo in photos}
        same, errors = [], []

        def work(index):
            for round_ in range(rounds):
                photo = photos[(index + round_) % len(photos)]
                try:
                    same.append(np.array_equal(segmenter.segment(photo).labels, expected[photo]))
                except Exception as error:     # counted, reported below
                    errors.append(repr(error))

        pool = [threading.Thread(target=work, args=(index,)) for index in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
    return {"calls": threads * rounds, "identical": sum(same), "errors": len(errors)}


# ---------------------------------------------------------------------------------------------- memory

# Runs the CLI in this process, then prints the process's peak RSS in MB (the CLI's own output comes first).
PEAK_RSS_OF_CLI = """
import resource, sys
from groupvit_edge.cli import main
try:
    main(sys.argv[1:])
except SystemExit as stop:
    status = stop.code
else:
    status = 0
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
sys.exit(status)
"""


def large_photo_memory(work: Path, artifact: Path, sides) -> list[tuple[str, float, float]]:
    from PIL import Image
    rows = []
    base = Image.open(sorted(EVAL.glob("*.jpg"))[0]).convert("RGB")
    for width, height in sides:
        photo = work / f"large-{width}x{height}.jpg"
        if not photo.exists():
            base.resize((width, height), Image.BILINEAR).save(photo, quality=90)
        started = time.perf_counter()
        code = PEAK_RSS_OF_CLI
        done = subprocess.run([sys.executable, "-c", code, "segment", str(artifact), str(photo), "--labels", "cat,dog",
                               "--out", str(work / "large-out")], capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr
        rows.append((f"{width}×{height} ({width * height / 1e6:.0f} MP)", float(done.stdout.strip().splitlines()[-1]),
                     time.perf_counter() - started))
    return rows


# ---------------------------------------------------------------------------------------------- fidelity

def resample_difference(count: int = 50) -> dict:
    """Pillow's anti-aliased bilinear vs OpenCV's INTER_LINEAR (mmseg) on the canvas the windows come from."""
    import cv2
    from PIL import Image
    from groupvit_edge.segmentation.preprocess import LONG_SIDE_RATIO
    differences, pillow_s, opencv_s = [], 0.0, 0.0
    photos = sorted(EVAL.glob("*.jpg"))[:count]
    for path in photos:
        image = Image.open(path).convert("RGB")
        width, height = image.size
        scale = min(448 / min(height, width), 448 * LONG_SIDE_RATIO / max(height, width))
        size = (int(width * scale + 0.5), int(height * scale + 0.5))
        tick = time.perf_counter()
        ours = np.asarray(image.resize(size, Image.BILINEAR)).astype(np.int16)
        pillow_s += time.perf_counter() - tick
        tick = time.perf_counter()
        theirs = cv2.resize(np.asarray(image), size, interpolation=cv2.INTER_LINEAR).astype(np.int16)
        opencv_s += time.perf_counter() - tick
        differences.append(np.abs(ours - theirs))
    return {"photos": len(photos), "mean abs": float(np.mean([d.mean() for d in differences])),
            "max abs": int(max(d.max() for d in differences)), "pillow ms": 1000 * pillow_s / len(photos),
            "opencv ms": 1000 * opencv_s / len(photos)}


def resample_label_agreement(artifact: Path, count: int = 20) -> float:
    """Share of pixels whose label is the same with either resize (10 COCO classes, real photos)."""
    from groupvit_edge.segmentation import Segmenter
    labels = "person,dog,car,tree,sky,grass,building,food,table,cat"
    photos = sorted(EVAL.glob("*.jpg"))[:count]
    with Segmenter.open(artifact, labels) as pillow, Segmenter.open(artifact, labels, resample="opencv") as opencv:
        return float(np.mean([np.mean(pillow.segment(p).labels == opencv.segment(p).labels) for p in photos]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="Work directory (default: a temporary one).")
    parser.add_argument("--quick", action="store_true", help="Fewer kill points and smaller photos.")
    args = parser.parse_args()
    work = args.out or Path(tempfile.mkdtemp(prefix="reliability-"))
    work.mkdir(parents=True, exist_ok=True)
    from groupvit_edge.hardware import cpu_header
    print(cpu_header(), "\n")
    artifact = work / "fp32"
    if not artifact.exists():
        assert cli("export", "--model", "random:0", "--image-size", SIZE, "--labels", "cat,dog", "--out",
                   artifact).returncode == 0
    outcomes = run_bad_inputs(work, artifact)
    tally = {}
    for outcome in outcomes.values():
        tally[outcome] = tally.get(outcome, 0) + 1
    print("| bad input | outcome |\n|---|---|")
    for name, outcome in outcomes.items():
        print(f"| {name} | {outcome} |")
    print(f"\n{len(outcomes)} bad inputs: " + ", ".join(f"{count} {name}" for name, count in sorted(tally.items())))

    delays = (0.5, 3.0, 8.0) if args.quick else (0.2, 0.5, 1, 2, 3, 5, 8, 12, 20)
    kills = kill_during_export(work, delays)
    print("\n| kill -9 after s | outcome |\n|---|---|")
    for delay, outcome in kills:
        print(f"| {delay} | {outcome} |")

    concurrent = concurrent_exports(work)
    print("\nconcurrent exports to one directory:", json.dumps(concurrent))

    openvino_artifact = work / "ov"
    if not openvino_artifact.exists():
        assert cli("export", "--model", "random:0", "--target", "openvino-fp32", "--image-size", SIZE, "--out",
                   openvino_artifact).returncode == 0
    print("\n| backend | threaded calls | identical to one thread | errors |\n|---|---|---|---|")
    for backend, source in (("onnxruntime", artifact), ("openvino", openvino_artifact)):
        result = threaded_calls(source, backend)
        print(f"| {backend} | {result['calls']} | {result['identical']} | {result['errors']} |")

    sides = [(3000, 2000), (6000, 4000)] if args.quick else [(3000, 2000), (6000, 4000), (12000, 12000)]
    print("\n| photo | peak RSS MB (segment, whole process) | seconds |\n|---|---|---|")
    for name, rss, seconds in large_photo_memory(work, artifact, sides):
        print(f"| {name} | {rss:.0f} | {seconds:.1f} |")

    try:
        fidelity = resample_difference()
        fidelity["label agreement % (20 photos)"] = 100 * resample_label_agreement(artifact)
        print("\nPillow vs OpenCV (mmseg) resize on the COCO eval photos:", json.dumps(fidelity))
    except ImportError:
        print("\nOpenCV not installed: pip install groupvit-edge[opencv] to measure the resize difference")
    print(f"\npeak RSS of this process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB; work "
          f"directory {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
