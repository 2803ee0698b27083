"""The path one request takes through the package's files: which files it enters, in what order, and how often
it climbs back to a higher layer (docs/ARCHITECTURE.md; the layers are tests/test_architecture.py's).

    python benchmarks/request_path.py                 # export random:0 --target onnx-int8, followed from to_int8
    python benchmarks/request_path.py --target onnx-int8 --from groupvit_edge.exporters.run:export

Every call from one groupvit_edge module into another is a step; a step into a module of a higher layer than the
caller's is a climb (a callback through a protocol counts: the call is made at run time whatever the imports say).
Only calls made below the `--from` function are followed.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from test_architecture import layer_of  # noqa: E402

from groupvit_edge.exporters.run import export  # noqa: E402


def follow(entry: str, run) -> list[tuple[str, str, str]]:
    """(caller module, callee module, callee function) of every cross-module call made below `entry`."""
    module_name, function = entry.split(":")
    steps: list[tuple[str, str, str]] = []
    depth = [0]

    def profile(frame, event, arg):
        if event != "call":
            if event == "return" and depth[0] and _is(frame, module_name, function):
                depth[0] -= 1
            return
        if _is(frame, module_name, function):
            depth[0] += 1
            return
        caller = frame.f_back
        if not depth[0] or caller is None:
            return
        callee, source = frame.f_globals.get("__name__", ""), caller.f_globals.get("__name__", "")
        if callee.startswith("groupvit_edge") and source.startswith("groupvit_edge") and callee != source:
            steps.append((source, callee, frame.f_code.co_name))

    sys.setprofile(profile)
    threading.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    return steps


def _is(frame, module_name: str, function: str) -> bool:
    return frame.f_code.co_name == function and frame.f_globals.get("__name__") == module_name


def summarize(steps: list[tuple[str, str, str]]) -> None:
    stays: list[str] = []
    for source, callee, _ in steps:
        if not stays:
            stays.append(source)
        if stays[-1] != callee:
            stays.append(callee)
    climbs = [(source, f"{callee}.{name}") for source, callee, name in steps if layer_of(callee) < layer_of(source)]
    distinct_climbs = sorted(set(climbs))
    returns = sum(1 for index, module in enumerate(stays) if module in stays[:index])
    print(f"{len(steps)} cross-module calls; {len(stays)} stays in {len(set(stays))} files; "
          f"{len(climbs)} calls climb to a higher layer ({len(distinct_climbs)} distinct); "
          f"{returns} stays return to a file already left")
    print("\ndistinct climbs (caller → callee):")
    for source, callee in distinct_climbs:
        print(f"  {source} → {callee}  ({sum(1 for c in climbs if c == (source, callee))} calls)")
    print("\nfiles in the order first entered:")
    print("  " + " → ".join(dict.fromkeys(stays)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="onnx-int8")
    parser.add_argument("--from", dest="entry", default="groupvit_edge.quantization.pipeline:to_int8")
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="request-path-") as scratch:
        steps = follow(args.entry, lambda: export("random:0", Path(scratch) / "art", args.target,
                                                  image_size=args.size, log=lambda message: None))
    print(f"export random:0 --target {args.target} --image-size {args.size}, followed from {args.entry}\n")
    summarize(steps)


if __name__ == "__main__":
    main()
