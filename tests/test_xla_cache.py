"""XLA's persistent compilation cache (``common/xla_cache.py``): the flags it sets, that
benchmark workers get it, and that this TensorFlow honours it with the same numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bnrl.common.xla_cache import DIRECTORY_FLAG, with_xla_cache
from bnrl.compare import workers
from bnrl.compare.results import RunSpec

# A graph-mode XLA compile in a fresh process, as a benchmark worker makes one: prints its value.
COMPILE = """
import json, os
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import tensorflow as tf
graph = tf.Graph()
with graph.as_default():
    x = tf.compat.v1.placeholder(tf.float32, [4, 3])  # a constant would be folded, not compiled
    fn = tf.function(lambda x: tf.reduce_sum(tf.tanh(tf.matmul(x, tf.transpose(x))) * 1.7),
                     jit_compile=True, autograph=False)
    y = fn(x)
with tf.compat.v1.Session(graph=graph) as sess:
    print(json.dumps(float(sess.run(y, {x: [[0.1, -0.2, 0.3]] * 4}))))
"""


def test_the_flags_name_the_directory_and_leave_a_users_choice():
    env = with_xla_cache({"PATH": "/bin"}, "/tmp/cache")
    assert env["PATH"] == "/bin"
    flags = env["TF_XLA_FLAGS"].split()
    assert flags[0] == f"{DIRECTORY_FLAG}=/tmp/cache"
    # The TF version and the CPU's instruction sets in every file name.
    assert flags[1].startswith("--tf_xla_persistent_cache_prefix=xla_tf2.")
    assert with_xla_cache({"TF_XLA_FLAGS": "--tf_xla_auto_jit=2"}, "/c")["TF_XLA_FLAGS"] \
        .startswith(f"--tf_xla_auto_jit=2 {DIRECTORY_FLAG}=/c ")
    mine = {"TF_XLA_FLAGS": f"{DIRECTORY_FLAG}=/mine"}
    assert with_xla_cache(mine, "/c") == mine


def test_benchmark_workers_share_the_cache_in_the_benchmark_directory(monkeypatch, tmp_path):
    started = {}

    def popen(args, **kwargs):
        started.update(kwargs)
        raise RuntimeError("not started")

    monkeypatch.delenv("TF_XLA_FLAGS", raising=False)
    monkeypatch.setattr(subprocess, "Popen", popen)
    spec = RunSpec("sac", "Pendulum-v1", "none", 0, 100, None, str(tmp_path / "runs" / "s0"), 1,
                   out=str(tmp_path))
    with pytest.raises(RuntimeError, match="not started"):
        workers._start_worker([spec])
    assert f"{DIRECTORY_FLAG}={tmp_path / workers.XLA_CACHE} " in started["env"]["TF_XLA_FLAGS"]


def test_a_second_process_loads_the_executable_and_computes_the_same(tmp_path):
    """The first process compiles and saves one entry; the second loads it (the file is not
    written again) and prints the same value: this TensorFlow reads the flags as
    common/xla_cache.py writes them."""
    env = with_xla_cache({k: v for k, v in os.environ.items() if k != "TF_XLA_FLAGS"},
                         tmp_path / "cache")

    def compile_once() -> tuple[float, dict[str, int]]:
        out = subprocess.run([sys.executable, "-c", COMPILE], env=env, capture_output=True,
                             text=True, check=True, timeout=120).stdout
        return json.loads(out), {p.name: p.stat().st_mtime_ns
                                 for p in Path(tmp_path / "cache").iterdir()}

    first, entries = compile_once()
    assert len(entries) == 1 and next(iter(entries)).startswith("xla_tf2.")
    again, entries_after = compile_once()
    assert entries_after == entries and again == first
