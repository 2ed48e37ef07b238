"""Predictions: Loopwise (micro-batching on ONNX Runtime int8) against one request per scoring in PyTorch fp32.

Every server is `loopwise serve` over one data root where `loopwise demo` ran (`--data-dir`; the dev profile,
where the text model passes its gate), answering the deployed version of the text model (MiniLM + features),
one instance per request, prediction log on. The peer scores each request alone in PyTorch fp32, as trained;
Loopwise micro-batches and scores on `serving.runtime`. Two more rows split the gain: micro-batching in
PyTorch, and one request per scoring on the fast runtime. All servers stay up and wrk (-c 8, loopback) rounds
alternate between them, so the load of a shared machine falls on each alike; each figure is the median of the
rounds.

First, the scoring path alone: the version's pyfunc (what the service calls) on its holdout rows in this
process, on each runtime, in micro-batches of random rows as the service forms them: agreement with PyTorch
fp32 (max |delta score|, delta AUC) and time per row, one row per call and micro-batched.

    python benchmarks/predictions.py --data-dir DIR [--rounds 3] [--duration 10] [--runtime onnx-int8]

Needs wrk (Debian's package).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from common import WRK_SCRIPT, Round, free_port, median_round, post, ready, stop, wrk

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PEER = "peer: one request per scoring, torch fp32"
@dataclass(frozen=True)
class Server:
    label: str
    micro_batching: bool
    runtime: str


def serve(data_dir: Path, server: Server, log: Path) -> tuple[subprocess.Popen, str]:
    """Start `loopwise serve` for one configuration; return it and its base URL once /readyz answers."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPARK_CONNECT", "LOOPWISE"))}
    env.update(LOOPWISE_DATA_DIR=str(data_dir), LOOPWISE__SERVING__MICRO_BATCHING=str(server.micro_batching).lower(),
               LOOPWISE__SERVING__RUNTIME=server.runtime)
    with log.open("w") as out:
        proc = subprocess.Popen([str(BIN / "loopwise"), "serve", "--port", str(port)], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    ready(proc, url, log, f"{server.label}: loopwise serve")
    return proc, url


def ensure_platform(data_dir: Path) -> None:
    """A data root where `loopwise demo` ran on the dev profile; built there first when it holds none (minutes)."""
    if (data_dir / "mlflow").is_dir():
        return
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPARK_CONNECT", "LOOPWISE", "MLFLOW_"))}
    env.update(LOOPWISE_DATA_DIR=str(data_dir))
    print(f"{data_dir} holds no platform: building one with `loopwise demo` (dev profile, a few minutes)...", flush=True)
    done = subprocess.run([str(BIN / "loopwise"), "demo"], env=env, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"loopwise demo failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def scoring_path(data_dir: Path, model: str, runtimes: list[str], batch_rows: int, blocks: int = 9) -> dict:
    """The deployed version on its holdout rows through its pyfunc (what the service calls), on each runtime:
    agreement with torch fp32, and the scoring path's own time per row, one row per call and `batch_rows` per call."""
    import mlflow
    import numpy as np
    from loopwise.backends import Backends
    from loopwise.config import load_settings
    from loopwise.serving.models import resolve_version
    from loopwise.training import runtime
    from loopwise.training.data import split_of
    from sklearn.metrics import roc_auc_score

    os.environ["LOOPWISE_DATA_DIR"] = str(data_dir)
    settings = load_settings()
    backends = Backends(settings)
    spec = backends.use_case.model(model)
    version, _ = resolve_version(settings.tracking_uri, spec)  # a fresh demo's: no rollout yet
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{spec.name}/{version}")
    layout = pyfunc.unwrap_python_model().layout
    rows = backends.lake().table(spec.training_table).read().to_pandas()
    holdout = rows[rows[spec.split_key].astype(str).map(split_of) == "holdout"].reset_index(drop=True)
    frame = holdout[layout.columns].astype({c: "float64" for c in (*layout.features, *layout.numeric)})
    labels = holdout[spec.label].astype(bool).to_numpy()
    # In micro-batches of random rows, as the service scores them: int8 quantizes activations per call, so a
    # row's score depends a little on the rows it is scored with.
    order = np.random.default_rng(7).permutation(len(frame))
    batches = [order[i:i + batch_rows] for i in range(0, len(order), batch_rows)]
    scores: dict[str, np.ndarray] = {}
    for name in ["torch", *runtimes]:
        runtime.use_scoring_runtime(name, settings.paths.root / "runtime")
        scores[name] = np.zeros(len(frame))
        for batch in batches:
            scores[name][batch] = np.asarray(pyfunc.predict(frame.iloc[batch]), dtype=float)
    # Timed in short blocks that alternate between the runtimes, medians of the blocks: a shared machine's load
    # comes and goes, and PyTorch's threads suffer most from it.
    samples: dict[str, dict[str, list[float]]] = {name: {k: [] for k in ("single", "batched", "single_cpu", "batched_cpu")}
                                                  for name in scores}
    for block in range(blocks):
        for name in scores:
            runtime.use_scoring_runtime(name, settings.paths.root / "runtime")
            single = order[block * 16:(block + 1) * 16]
            wall, cpu = time.perf_counter(), time.process_time()
            for i in single:
                pyfunc.predict(frame.iloc[[i]])
            samples[name]["single"].append((time.perf_counter() - wall) * 1e3 / len(single))
            samples[name]["single_cpu"].append((time.process_time() - cpu) * 1e3 / len(single))
            chunk = batches[block * 4:(block + 1) * 4]
            wall, cpu = time.perf_counter(), time.process_time()
            for batch in chunk:
                pyfunc.predict(frame.iloc[batch])
            rows_done = sum(len(b) for b in chunk)
            samples[name]["batched"].append((time.perf_counter() - wall) * 1e3 / rows_done)
            samples[name]["batched_cpu"].append((time.process_time() - cpu) * 1e3 / rows_done)
    timing = {name: {f"{k}_ms": float(np.median(v)) for k, v in kinds.items()} for name, kinds in samples.items()}
    for name, t in timing.items():
        print(f"  {name}: {t['single_ms']:.1f} ms a row one per call, {t['batched_ms']:.1f} ms a row {batch_rows} per "
              f"call (wall; CPU {t['single_cpu_ms']:.1f} and {t['batched_cpu_ms']:.1f})", flush=True)
    runtime.use_scoring_runtime("torch")
    auc = {name: float(roc_auc_score(labels, s)) for name, s in scores.items()}
    return {"version": version, "rows": len(frame), "positives": int(labels.sum()), "auc_torch": auc["torch"],
            "timing": timing,
            "runtimes": {name: {"max_delta": float(np.abs(scores[name] - scores["torch"]).max()),
                                "mean_delta": float(np.abs(scores[name] - scores["torch"]).mean()),
                                "auc": auc[name], "delta_auc": auc[name] - auc["torch"]} for name in runtimes}}


def instance(data_dir: Path, model: str) -> dict:
    from loopwise.backends import Backends
    from loopwise.config import load_settings

    os.environ["LOOPWISE_DATA_DIR"] = str(data_dir)
    backends = Backends(load_settings())
    spec = backends.use_case.model(model)
    row = backends.lake().table(spec.training_table).read().slice(0, 1).to_pylist()[0]
    return {f: row[f] for f in spec.request.model_fields}  # type: ignore[union-attr]


def entry(args: argparse.Namespace, results: dict[str, Round], agreed: dict, loopwise: str,
          load: tuple[str, str]) -> list[str]:
    from common import machine

    peer, ours = results[PEER], results[loopwise]
    ratio = ours.rps / peer.rps
    met = ratio >= 3 and ours.p99_ms <= peer.p99_ms
    lines = [f"Machine: {machine()}. Load average at the start {load[0]}, at the end {load[1]}. "
             f"Model `{args.model}` version {agreed['version']} (MiniLM + features) from a "
             f"`loopwise demo` data root, one instance per request, prediction log on, 1 server worker each; wrk -t1 "
             f"-c{args.connections} on loopback, {args.rounds} rounds of {args.duration} s alternating between the "
             "servers (all up at once), after a 3 s warm-up each; medians of the rounds. CPU per request is the "
             "server's own (all its threads), the steadier figure on a shared machine.\n",
             "| server | requests/s | p50 ms | p99 ms | errors | server CPU per request | other processes' CPU |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {k} | {v.rps:.1f} | {v.p50_ms:.1f} | {v.p99_ms:.1f} | {v.errors} | {v.cpu_ms_per_request:.1f} ms | "
              f"{v.others:.0%} |" for k, v in results.items()]
    lines += ["", f"Ratio: Loopwise {ratio:.2f}x the peer's requests/s, p99 {ours.p99_ms:.1f} ms against "
                  f"{peer.p99_ms:.1f} ms; CPU per request {peer.cpu_ms_per_request / ours.cpu_ms_per_request:.2f}x "
                  f"lower. Goal (3x at no worse p99) {'met' if met else 'NOT met'}.", "",
              f"The scoring path alone (the version's pyfunc in this process: no HTTP, features or log), on its "
              f"{agreed['rows']} holdout rows ({agreed['positives']} positive; AUC {agreed['auc_torch']:.4f} in "
              f"fp32), in micro-batches of {args.connections} random rows as the service scores them, against PyTorch "
              "fp32; time per row (wall, then process CPU), medians of 9 blocks alternating between the runtimes, "
              "each 16 rows one per call and 4 micro-batches:", "",
              "| runtime | ms a row, one per call | ms a row, micro-batched | max abs delta score | mean abs delta score "
              "| AUC | delta AUC |", "|---|---|---|---|---|---|---|"]
    timing = agreed["timing"]
    for name in timing:
        a = agreed["runtimes"].get(name, {"max_delta": 0.0, "mean_delta": 0.0, "auc": agreed["auc_torch"],
                                          "delta_auc": 0.0})
        t = timing[name]
        lines.append(f"| {name} | {t['single_ms']:.1f} (CPU {t['single_cpu_ms']:.1f}) | {t['batched_ms']:.1f} (CPU "
                     f"{t['batched_cpu_ms']:.1f}) | {a['max_delta']:.2e} | {a['mean_delta']:.2e} | {a['auc']:.4f} | "
                     f"{a['delta_auc']:+.4f} |")
    fast = timing[args.runtime]["batched_ms"]
    lines += ["", f"Scoring path: {args.runtime} micro-batched is {timing['torch']['single_ms'] / fast:.2f}x torch fp32 "
                  f"one row per call ({timing['torch']['single_ms'] / timing['torch']['batched_ms']:.2f}x from "
                  "micro-batching in torch alone)."]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=ROOT / ".loopwise",
                        help="a data root where `loopwise demo` ran (built there first when it holds none)")
    parser.add_argument("--model", default="ticket-escalation", help="the model to call (default: the text model)")
    parser.add_argument("--runtime", default="onnx-int8", choices=["onnx", "onnx-int8"], help="Loopwise's runtime")
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per round and server")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all servers")
    parser.add_argument("--connections", type=int, default=8, help="wrk's concurrency")
    parser.add_argument("--no-record", action="store_true", help="print the figures, do not append to RESULTS.md")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    data_dir = args.data_dir.resolve()
    ensure_platform(data_dir)
    loopwise = f"Loopwise: micro-batching, {args.runtime}"
    from common import load_average

    load_before = load_average()
    servers = [Server(PEER, False, "torch"), Server(loopwise, True, args.runtime),
               Server("micro-batching, torch fp32", True, "torch"), Server(f"one request per scoring, {args.runtime}",
                                                                           False, args.runtime)]
    print("the scoring path on the holdout (also exports the encoder into the data root's cache)...", flush=True)
    agreed = scoring_path(data_dir, args.model, ["onnx", "onnx-int8"], args.connections)
    body = json.dumps({"instances": [instance(data_dir, args.model)]}).encode()
    work = Path(tempfile.mkdtemp(prefix="loopwise-predictions-"))
    (work / "body.json").write_bytes(body)
    (work / "post.lua").write_text(WRK_SCRIPT)
    running: dict[str, tuple[subprocess.Popen, str]] = {}
    rounds: dict[str, list[Round]] = {s.label: [] for s in servers}
    try:
        for server in servers:
            print(f"starting {server.label}...", flush=True)
            running[server.label] = serve(data_dir, server, work / f"serve-{len(running)}.log")
        path = f"/v1/models/{args.model}:predict"
        answers = {label: post(url + path, body, timeout=60)["predictions"][0]["score"] for label, (_, url) in running.items()}
        if args.runtime == "onnx-int8" and answers[loopwise] == answers[PEER]:
            raise SystemExit("Loopwise answered exactly the peer's fp32 score: the service did not apply "
                             "serving.runtime (Service.startup in serving/app.py calls use_scoring_runtime)")
        print(f"one instance's score: {answers}", flush=True)
        for proc, url in running.values():  # warm-up, not counted
            wrk(url + path, work / "body.json", work / "post.lua", 3, args.connections, proc.pid)
        for i in range(args.rounds):
            for label, (proc, url) in running.items():
                rounds[label].append(wrk(url + path, work / "body.json", work / "post.lua", args.duration,
                                         args.connections, proc.pid))
                r = rounds[label][-1]
                print(f"round {i + 1} {label:<44} {r.rps:7.1f} req/s  p50 {r.p50_ms:6.1f} ms  p99 {r.p99_ms:6.1f} ms  "
                      f"errors {r.errors}  CPU/request {r.cpu_ms_per_request:5.1f} ms  others {r.others:.0%}",
                      flush=True)
    finally:
        for proc, _ in running.values():
            stop(proc)
        shutil.rmtree(work, ignore_errors=True)
    results = {label: median_round(r) for label, r in rounds.items()}
    lines = entry(args, results, agreed, loopwise, (load_before, load_average()))
    print("\n".join(lines))
    if not args.no_record:
        from common import RESULTS, commit

        with RESULTS.open("a") as f:
            f.write("\n".join([f"\n## predictions.py — {datetime.now():%Y-%m-%d %H:%M} — commit {commit()}", *lines])
                    + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # common: machine() and commit()
    sys.path.insert(0, str(ROOT / "platform"))
    main()
