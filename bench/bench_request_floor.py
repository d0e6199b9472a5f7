"""The fixed cost of one request through each pipeline, and where each millisecond goes.

    .venv/bin/python bench/bench_request_floor.py                      # both pipelines
    .venv/bin/python bench/bench_request_floor.py --requests 60 --pipeline mura

With tiny models (the MURA `--tiny` stand-ins; the wrist detectors untrained yolo11n at a small
serving size) the model compute is a few ms, so what a request costs on top of it is visible.
Each pipeline is served twice, by a bare tritonserver and by `msk serve`'s front door (the guard
composition users get), and sent the same small image one request at a time with the project's
clients (`MuraClient.score_one`, `WristClient.infer_array`). Per request it reports:

* client wall time through the front door and against bare Triton (their difference: the guard);
* Triton's own view from its metrics counters (diffed around the timed requests): the ensemble's
  request duration, and per step its queue time and compute (input + infer + output);
* per ONNX step the same graph run in-process with ONNX Runtime on an input of the same shape
  (fastest of 20 runs): compute minus that is the python-backend stub's IPC and Python around
  the runtime;
* the ensemble's scheduling: its request duration minus the steps' critical path (the four MURA
  backbones run side by side, so the path counts the slowest);
* gRPC + client encode/decode: bare client time minus the ensemble's request duration.

`--no-queue-delay` serves copies whose `max_queue_delay_microseconds` is 0, to show what the
batching delay adds to a lone request. `--wrist-clahe one_hot,scatter --rounds 2` serves copies
of the wrist repository whose `wrist_preprocess` computes CLAHE each way
(`msk.graphs.wrist_preprocess.CLAHE_CONSTRUCTIONS`; "one_hot" is the graph served before the
scatter-add histograms, "scatter" the one served now; same outputs), alternately, and prints each
one's medians over the rounds as a ratio to the first's. Ratios are of the same run; see
bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from msk.host import describe  # noqa: E402

COUNTERS = ("request_duration", "queue_duration", "compute_input_duration",
            "compute_infer_duration", "compute_output_duration")


def metrics(url: str) -> dict[str, dict[str, float]]:
    """model -> counter -> value (version-summed), plus `success` (requests answered)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    out: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for m in re.finditer(r'^nv_inference_(\w+?)(?:_us)?\{model="([^"]+)"[^}]*\} (\S+)$', text,
                         re.M):
        name, model, value = m.group(1), m.group(2), float(m.group(3))
        if name in COUNTERS or name == "request_success":
            out[model][name] += value
    return out


def per_request(before: dict, after: dict, requests: int) -> dict[str, dict[str, float]]:
    """model -> counter -> ms per client request (counters diffed, us -> ms)."""
    rows = {}
    for model in after:
        rows[model] = {c: (after[model][c] - before.get(model, {}).get(c, 0.0)) / 1e3 / requests
                       for c in COUNTERS}
        rows[model]["executions"] = (after[model]["request_success"]
                                     - before.get(model, {}).get("request_success", 0.0))
    return rows


def ensemble_steps(repository: Path, ensemble: str) -> list[tuple[str, set[str], set[str]]]:
    """(model, input tensors, output tensors) of each step of `ensemble`'s config."""
    text = (repository / ensemble / "config.pbtxt").read_text()
    steps = []
    for block in re.findall(r"\{\s*model_name:.*?\}\s*(?=,|\])", text, re.S):
        model = re.search(r'model_name: "([^"]+)"', block).group(1)
        ins = set(re.findall(r'input_map \{ key: "[^"]+" value: "([^"]+)" \}', block))
        outs = set(re.findall(r'output_map \{ key: "[^"]+" value: "([^"]+)" \}', block))
        steps.append((model, ins, outs))
    return steps


def critical_path(steps, durations: dict[str, float]) -> float:
    """Longest chain of step durations (a step starts when its inputs' producers finish)."""
    finish: dict[str, float] = {}
    produced_by: dict[str, str] = {}
    for model, _, outs in steps:
        for tensor in outs:
            produced_by[tensor] = model
    for model, ins, _ in steps:             # steps are listed in a valid order
        start = max((finish[produced_by[t]] for t in ins if t in produced_by), default=0.0)
        finish[model] = start + durations.get(model, 0.0)
    return max(finish.values(), default=0.0)


def in_process_ms(graph: Path, feeds: dict[str, np.ndarray], repeats: int = 20) -> float:
    """Fastest ms of one ORT run of `graph` in-process, 1 thread per step as served (the
    minimum, not the median: on a shared host it is the best estimate of the compute itself)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    session.run(None, feeds)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(1e3 * (time.perf_counter() - start))
    return min(times)


def config_dims(repository: Path, model: str) -> dict[str, list[int]]:
    """input name -> full shape of one request from the model's config (batch 1 prepended when
    it batches); what Triton hands the runtime for a lone request."""
    text = (repository / model / "config.pbtxt").read_text()
    batching = int(re.search(r"max_batch_size: (\d+)", text).group(1)) > 0
    block = re.search(r"^input \[(.*?)^\]", text, re.S | re.M).group(1)
    shapes = {}
    for name, dims in re.findall(r'name: "([^"]+)" data_type: \w+ dims: \[([^\]]*)\]', block):
        shape = [int(d) for d in dims.replace(",", " ").split()]
        shapes[name] = [1, *shape] if batching else shape
    return shapes


def random_feeds(graph: Path, image: np.ndarray, shapes: dict[str, list[int]]
                 ) -> dict[str, np.ndarray]:
    """Inputs of the graph's shapes, its dynamic dims from the config (else 1); 2-D uint8
    images get `image`."""
    import onnxruntime as ort

    types = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8, "tensor(int64)": np.int64}
    rng = np.random.default_rng(0)
    feeds = {}
    for spec in ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"]).get_inputs():
        dtype = types.get(spec.type, np.float32)
        if dtype == np.uint8 and len(spec.shape) == 2:
            feeds[spec.name] = image
            continue
        given = shapes.get(spec.name, [None] * len(spec.shape))
        shape = [d if isinstance(d, int) and d > 0 else (c if isinstance(c, int) and c > 0
                                                          else 1)
                 for d, c in zip(spec.shape, given, strict=False)]
        feeds[spec.name] = (rng.random(shape) * (255 if dtype == np.uint8 else 1)).astype(dtype)
    return feeds


def newest_graph(repository: Path, model: str) -> Path | None:
    graphs = sorted((repository / model).glob("*/model.onnx"), key=lambda p: int(p.parent.name))
    return graphs[-1] if graphs else None


def timed(call, image: np.ndarray, warmup: int, requests: int) -> list[float]:
    for _ in range(warmup):
        call(image)
    times = []
    for _ in range(requests):
        start = time.perf_counter()
        call(image)
        times.append(1e3 * (time.perf_counter() - start))
    return times


def measure(repository: Path, ensemble: str, client_factory, image: np.ndarray,
            warmup: int, requests: int) -> dict:
    """Bare Triton (with its metrics) and the front door, same client and image."""
    from server.launcher import TritonServer
    from server.serve import front_door

    with TritonServer(repository) as server, client_factory(server.grpc_url) as (client, call):
        call_ = lambda img: call(client, img)  # noqa: E731
        timed(call_, image, warmup, 0)
        before = metrics(server.metrics_url)
        bare = timed(call_, image, 0, requests)
        after = metrics(server.metrics_url)
    with front_door(repository) as server, client_factory(server.grpc_url) as (client, call):
        door = timed(lambda img: call(client, img), image, warmup, requests)
    steps = per_request(before, after, requests)
    return {"bare_ms": statistics.median(bare), "door_ms": statistics.median(door),
            "bare_mean_ms": statistics.fmean(bare), "steps": steps}


class _Mura:
    def __init__(self, url: str) -> None:
        from clients.mura import MuraClient
        self.client = MuraClient(url, concurrency=1)

    def __enter__(self):
        self.client.__enter__()
        return self.client, lambda c, img: _ok(c.score_one(img, heatmap=False))

    def __exit__(self, *exc) -> None:
        self.client.__exit__(*exc)


def _ok(result):
    if result.error:
        raise RuntimeError(result.error)
    return result


class _Wrist:
    def __init__(self, url: str) -> None:
        from clients.wrist import WristClient
        self.client = WristClient(url)

    def __enter__(self):
        self.client.__enter__()
        return self.client, lambda c, img: c.infer_array(img)

    def __exit__(self, *exc) -> None:
        self.client.__exit__(*exc)


def build_mura(work: Path) -> Path:
    from export.repository import build_repository

    build_repository(work / "mura", tiny=True)
    return work / "mura"


def build_wrist(work: Path, imgsz: int) -> Path:
    from bench.bench_wrist import untrained_checkpoint
    from export.wrist_repository import write_wrist_models
    from msk.constants import WRIST_BONE_CLASSES, WRIST_JOINT_CLASSES

    weights = {"joints": untrained_checkpoint(work / "joints.pt", WRIST_JOINT_CLASSES, imgsz),
               "bones": untrained_checkpoint(work / "bones.pt", WRIST_BONE_CLASSES, imgsz)}
    write_wrist_models(work / "wrist", weights, version=1)
    return work / "wrist"


def with_clahe(repository: Path, out: Path, clahe: str) -> Path:
    """A copy of a wrist repository whose `wrist_preprocess` computes CLAHE as `clahe` (a key of
    `CLAHE_CONSTRUCTIONS`), for the same detector input size."""
    import onnx

    from msk.constants import WRIST_PREPROCESS_MODEL
    from msk.graphs.wrist_preprocess import write_preprocess_graph

    shutil.copytree(repository, out, symlinks=True)
    graph = newest_graph(out, WRIST_PREPROCESS_MODEL)
    props = {p.key: p.value for p in onnx.load(str(graph)).metadata_props}
    in_h, in_w = (int(v) for v in props["detector_input"].split("x"))
    write_preprocess_graph(graph, in_h, in_w, clahe=clahe)
    return out


def clahe_table(summaries: list[dict]) -> None:
    """Per CLAHE construction: medians over the rounds of the front-door time, the served step's
    compute and its in-process ORT time, and their ratios to the first variant's."""
    from msk.constants import WRIST_PREPROCESS_MODEL

    by_variant: dict[str, list[dict]] = defaultdict(list)
    for s in summaries:
        if "clahe" in s:
            by_variant[s["clahe"]].append(s)
    if len(by_variant) < 2:
        return

    def step(s: dict, key: str) -> float:
        return next(r[key] for r in s["steps"] if r["step"] == WRIST_PREPROCESS_MODEL) or 0.0

    rows = {}
    for variant, runs in by_variant.items():
        rows[variant] = (statistics.median(r["client_front_door_ms"] for r in runs),
                         statistics.median(step(r, "compute_ms") for r in runs),
                         statistics.median(step(r, "in_process_ms") for r in runs), len(runs))
    base = next(iter(rows.values()))

    def ratio(value: float, first: float) -> str:
        return f"{value / first:.3f}" if first else "-"

    print("\n| CLAHE construction | rounds | front door ms | ratio | wrist_preprocess compute ms "
          "| ratio | in-process ORT ms | ratio |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    for variant, (door, compute, local, n) in rows.items():
        print(f"| {variant} | {n} | {door:.1f} | {ratio(door, base[0])} | {compute:.1f} | "
              f"{ratio(compute, base[1])} | {local:.1f} | {ratio(local, base[2])} |")


def no_queue_delay(repository: Path, out: Path) -> Path:
    """A copy whose configs batch without waiting (`max_queue_delay_microseconds: 0`)."""
    shutil.copytree(repository, out, symlinks=True)
    for config in out.glob("*/config.pbtxt"):
        text = config.read_text()
        config.write_text(re.sub(r"max_queue_delay_microseconds: \d+",
                                 "max_queue_delay_microseconds: 0", text))
    return out


def report(name: str, repository: Path, ensemble: str, result: dict, image: np.ndarray) -> dict:
    steps = result["steps"]
    ens = steps.get(ensemble, {})
    path_steps = ensemble_steps(repository, ensemble)
    durations = {m: steps.get(m, {}).get("request_duration", 0.0) for m, _, _ in path_steps}
    path = critical_path(path_steps, durations)
    rows = []
    for model, _, _ in path_steps:
        s = steps.get(model, {})
        compute = sum(s.get(c, 0.0) for c in COUNTERS[2:])
        graph = newest_graph(repository, model)
        local = None
        if graph is not None:
            try:
                local = in_process_ms(graph, random_feeds(graph, image,
                                                          config_dims(repository, model)))
            except Exception as exc:  # why: a step we cannot feed is reported as "-"
                print(f"{model}: not run in-process ({type(exc).__name__}: {exc})",
                      file=sys.stderr)
        rows.append({"step": model, "request_ms": s.get("request_duration", 0.0),
                     "queue_ms": s.get("queue_duration", 0.0), "compute_ms": compute,
                     "in_process_ms": local,
                     "stub_and_python_ms": None if local is None else compute - local})
    summary = {
        "pipeline": name, "client_front_door_ms": result["door_ms"],
        "client_bare_triton_ms": result["bare_ms"],
        "guard_ms": result["door_ms"] - result["bare_ms"],
        "ensemble_request_ms": ens.get("request_duration", 0.0),
        "grpc_and_client_ms": result["bare_mean_ms"] - ens.get("request_duration", 0.0),
        "critical_path_ms": path,
        "ensemble_scheduling_ms": ens.get("request_duration", 0.0) - path,
        "steps": rows,
    }
    print(f"\n### {name}: {result['door_ms']:.1f} ms per request through the front door "
          f"({result['bare_ms']:.1f} ms against bare Triton)\n")
    print("| part | ms per request |\n|---|---:|")
    print(f"| guard / front door (front door - bare, medians) | {summary['guard_ms']:.1f} |")
    print(f"| gRPC + client encode/decode (bare mean - ensemble request) | "
          f"{summary['grpc_and_client_ms']:.1f} |")
    print(f"| ensemble scheduling (ensemble request - critical path) | "
          f"{summary['ensemble_scheduling_ms']:.1f} |")
    print(f"| steps on the critical path | {path:.1f} |")
    print("\n| step | request | queue | compute | in-process ORT | stub IPC + Python |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        local = "-" if r["in_process_ms"] is None else f"{r['in_process_ms']:.2f}"
        stub = "-" if r["stub_and_python_ms"] is None else f"{r['stub_and_python_ms']:.2f}"
        print(f"| {r['step']} | {r['request_ms']:.2f} | {r['queue_ms']:.2f} | "
              f"{r['compute_ms']:.2f} | {local} | {stub} |")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", choices=("mura", "wrist", "both"), default="both")
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--wrist-size", type=int, default=224,
                        help="training size of the untrained detectors (serving size follows)")
    parser.add_argument("--no-queue-delay", action="store_true",
                        help="also serve copies with max_queue_delay_microseconds 0")
    parser.add_argument("--wrist-clahe", default="scatter",
                        help="comma-separated CLAHE constructions of wrist_preprocess to serve "
                             "in turn (scatter: served; one_hot: the one served before it)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="serve the --wrist-clahe variants this many times, alternately")
    args = parser.parse_args(argv)
    from msk.graphs.wrist_preprocess import CLAHE_CONSTRUCTIONS

    constructions = args.wrist_clahe.split(",")
    unknown = sorted(set(constructions) - set(CLAHE_CONSTRUCTIONS))
    if unknown:
        parser.error(f"--wrist-clahe: unknown {unknown}; "
                     f"choose from {sorted(CLAHE_CONSTRUCTIONS)}")
    print(f"host CPU: {describe()}")
    from msk.samples import radiograph

    image = (radiograph(320, 256, 1) * 255).astype(np.uint8)
    summaries = []
    with tempfile.TemporaryDirectory(prefix="msk-floor-") as tmp:
        work = Path(tmp)
        plans = []
        if args.pipeline in ("mura", "both"):
            from msk.constants import MURA_ENSEMBLE_MODEL
            plans.append(("mura", build_mura(work), MURA_ENSEMBLE_MODEL, _Mura))
        if args.pipeline in ("wrist", "both"):
            from msk.constants import WRIST_DETECT_MODEL
            wrist = build_wrist(work, args.wrist_size)
            if constructions == ["scatter"]:
                plans.append(("wrist", wrist, WRIST_DETECT_MODEL, _Wrist))
            else:
                copies = {c: with_clahe(wrist, work / f"wrist-{c}", c) for c in constructions}
                plans += [(f"wrist, {c} CLAHE (round {r + 1})", copies[c],
                           WRIST_DETECT_MODEL, _Wrist)
                          for r in range(args.rounds) for c in constructions]
        for name, repository, ensemble, factory in plans:
            variants = [(name, repository)]
            if args.no_queue_delay:
                variants.append((f"{name}, max_queue_delay 0",
                                 no_queue_delay(repository, work / f"{name}-nodelay")))
            for label, repo in variants:
                result = measure(repo, ensemble, factory, image, args.warmup, args.requests)
                summaries.append(report(label, repo, ensemble, result, image))
                clahe = re.search(r"wrist, (\w+) CLAHE", label)
                if clahe and "max_queue_delay" not in label:
                    summaries[-1]["clahe"] = clahe.group(1)
    if len(summaries) > 1:
        base = summaries[0]["client_front_door_ms"]
        print("\n| run | front door ms | ratio vs first |\n|---|---:|---:|")
        for s in summaries:
            print(f"| {s['pipeline']} | {s['client_front_door_ms']:.1f} | "
                  f"{s['client_front_door_ms'] / base:.2f} |")
    clahe_table(summaries)
    print(json.dumps({"host": describe(), "runs": summaries}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
