"""What one update call costs beyond its update: the profile behind benchmarks/README.md's
"What one call costs beyond its update".

    python benchmarks/call_cost.py                                  # SAC, Batch Renorm critic
    python benchmarks/call_cost.py --agent crossq --critic-norm batch_renorm
    python benchmarks/call_cost.py --agent sac --critic-norm none   # the plain graph

Two measurements on one agent (throughput.py's settings: Pendulum-v1, [256, 256], batch 256):

1. Time per update against the updates per call: single updates (``update``, one ``sess.run``
   each) and multi-update calls of K updates (``update_many``, one XLA ``tf.while_loop``), on
   the same pre-sampled batches, in alternating order over ``--repeats`` rounds. Fitting
   ``ms per update = loop + call / K`` to the multi-update rows gives the loop's time per
   update and what each call adds; a single update's excess over the loop is its call cost.
2. TensorFlow's profiler over ``--calls`` single updates: per call, the session run, the XLA
   launch op, the executable's run with its set-up, and the run alone (the compiled update's
   own computation). Without XLA (a plain graph) only the session run is there.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import AGENT_NAMES, BATCH, Row, bnrl_agent, exit_unless_positive  # noqa: E402

# Host-plane events of one compiled call, outermost first (the names of TensorFlow's TraceMe
# annotations in tf_keras 2.21 / TensorFlow 2.21).
EVENTS = {"SessionRun": "session run",
          "ExecutorState::ProcessAsync::Start": "XLA launch op",
          "CpuExecutable::ExecuteAsyncOnStream": "executable run with set-up",
          "BlockUntilReady": "executable run"}


def fit_call_cost(ms_per_update: dict[int, float]) -> tuple[float, float]:
    """Least squares of ``ms = loop + call / K`` over ``{K: ms per update}``: (loop, call)."""
    ks = sorted(ms_per_update)
    if len(ks) < 2:
        raise ValueError("the fit needs at least two K")
    x = [1.0 / k for k in ks]
    y = [ms_per_update[k] for k in ks]
    mx, my = statistics.fmean(x), statistics.fmean(y)
    call = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True)) / sum(
        (a - mx) ** 2 for a in x)
    return my - call * mx, call


def sweep(agent, ks: list[int], calls: int, repeats: int) -> dict[int, float]:
    """Median ms per update of single updates (key 0) and of calls of K updates."""
    batches = [agent.buffer.sample(BATCH) for _ in range(max(ks))]
    for k in ks:  # compile every loop length first
        agent.update_many(batches[:k])
    samples: dict[int, list[float]] = {}
    order = [0, *ks]
    for repeat in range(repeats):
        for k in order if repeat % 2 == 0 else order[::-1]:
            n = calls if k == 0 else max(1, calls // k)
            start = time.perf_counter()
            for i in range(n):
                if k == 0:
                    agent.update(batches[i % len(batches)])
                else:
                    agent.update_many(batches[:k])
            samples.setdefault(k, []).append(
                (time.perf_counter() - start) * 1e3 / (n * max(k, 1)))
    return {k: statistics.median(v) for k, v in samples.items()}


def profile(agent, calls: int) -> dict[str, float]:
    """Microseconds per single update call in each of ``EVENTS`` (absent ones left out)."""
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    batches = [agent.buffer.sample(BATCH) for _ in range(calls)]
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        for batch in batches:
            agent.update(batch)
        tf.profiler.experimental.stop()
        totals: Counter = Counter()
        for path in Path(logdir).rglob("*.xplane.pb"):
            space = xplane_pb2.XSpace.FromString(path.read_bytes())
            for plane in space.planes:
                names = {k: v.name for k, v in plane.event_metadata.items()}
                for line in plane.lines:
                    for event in line.events:
                        name = names.get(event.metadata_id)
                        if name in EVENTS:
                            totals[name] += event.duration_ps / 1e6
    return {name: totals[name] / calls for name in EVENTS if totals[name]}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agent", default="sac", help=f"one of {', '.join(AGENT_NAMES)}")
    parser.add_argument("--critic-norm", default="batch_renorm")
    parser.add_argument("--ks", default="1,2,4,8,16", help="updates per multi-update call")
    parser.add_argument("--calls", type=int, default=320, help="single updates timed per round")
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds (median)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    from bnrl.common.quiet import quiet_tensorflow

    quiet_tensorflow()  # after parsing, so that --help stays instant
    from bnrl.networks import NORM_KINDS

    if args.agent not in AGENT_NAMES:
        parser.exit(2, f"unknown agent '{args.agent}': use {', '.join(AGENT_NAMES)}\n")
    if args.critic_norm not in NORM_KINDS:
        parser.exit(2, f"unknown norm '{args.critic_norm}': use {', '.join(NORM_KINDS)}\n")
    try:
        args.ks = sorted({int(k) for k in args.ks.split(",")})
    except ValueError:
        parser.exit(2, f"--ks must be whole numbers separated by commas, got '{args.ks}'\n")
    if len(args.ks) < 2 or args.ks[0] < 1:
        parser.exit(2, "--ks needs two or more counts >= 1\n")
    exit_unless_positive(parser, args, ("calls", "repeats", "threads"))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    agent, _ = bnrl_agent(Row(args.agent, args.critic_norm), args.threads, gradient_steps=2)
    for _ in range(30):  # compiles the single-update variants
        agent.train_step()
    ms = sweep(agent, args.ks, args.calls, args.repeats)
    loop, call = fit_call_cost({k: v for k, v in ms.items() if k})
    print(f"{args.agent}, critic {args.critic_norm}, {args.threads} threads: ms per update")
    for k, value in ms.items():
        print(f"  {'single update' if k == 0 else f'{k} per call':>14}: {value:.3f}")
    print(f"  fit ms = loop + call / K: loop {loop:.3f} ms per update, {call:.3f} ms per call; "
          f"a single update's call cost {ms[0] - loop:.3f} ms")
    events = profile(agent, args.calls)
    print(f"TensorFlow profiler, us per single update call ({args.calls} calls):")
    for name, us in events.items():
        print(f"  {EVENTS[name]:>26}: {us:8.0f}  ({name})")
    if "BlockUntilReady" not in events:
        print("  (no XLA events: the single update runs the plain graph)")
    agent.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
