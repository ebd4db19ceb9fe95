"""TensorBoard scalars, HPARAMS and ``metrics.csv``, written without touching the agent's graph.

Events are written with TensorBoard's own ``EventFileWriter`` (no TensorFlow ops, no second
``sess.run``). On resume a ``SessionLog.START`` event at the resumed step makes TensorBoard drop
the events a killed run wrote after its last checkpoint, so the step axis stays continuous.

Each run is also a session of TensorBoard's hparams plugin: its resolved settings (session start
info) and, when it finishes, its final results as ``final/...`` scalars and a session end info,
written to its own TensorBoard run ``RUN_DIR/hparams``. No experiment summary is written:
TensorBoard then builds the HPARAMS table from the settings of every run under ``--logdir`` (a
benchmark mixing agents gets the union of their settings) and offers as metrics the scalar tags
of the session's run and its subdirectories only: so the ``final/...`` results, not the 16
per-layer BN tags and the losses of the training scalars beside them (issue 28). Each run is its
own trial, named after its directory (not a hash of its settings, which merged two runs with the
same settings into one row).

A custom-scalars layout (TensorBoard's CUSTOM SCALARS tab) puts the BN diagnostics of issue 1's
second write-up and the train/eval gap of each network with BN on one page, under their exact
tag names (``bn_Q_moving_mean``...), beside the evaluation return.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, types_pb2
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.custom_scalar import metadata as layout_metadata
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
from tensorboard.plugins.hparams import summary_v2 as hparams_summary
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from bnrl.common.files import atomic_open


def flatten_settings(settings: dict, prefix: str = "") -> dict[str, bool | int | float | str]:
    """Nested settings as hparams: ``{"agent_config": {"hidden": [256]}}`` becomes
    ``{"agent_config.hidden": "[256]"}``; lists and None become strings (hparams are scalars)."""
    flat = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_settings(value, f"{name}."))
        elif isinstance(value, bool | int | float | str):
            flat[name] = value
        else:
            flat[name] = str(list(value) if isinstance(value, tuple) else value)
    return flat


SESSION_RUN = "hparams"
"""The subdirectory of a run directory that is its HPARAMS session (settings, final results)."""


class ScalarLogger:
    """Scalars to TensorBoard (``run_dir``) and eval returns to ``run_dir/metrics.csv``.

    Args:
      run_dir: the run directory.
      resume_step: when resuming, the checkpoint step: later events and CSV rows are dropped.
    """

    def __init__(self, run_dir, resume_step: int | None = None):
        self.run_dir = Path(run_dir)
        self._writer = EventFileWriter(str(self.run_dir), flush_secs=10)
        self._session = EventFileWriter(str(self.run_dir / SESSION_RUN), flush_secs=10)
        self._csv = self.run_dir / "metrics.csv"
        self.eval_rows: list[tuple[int, float, float]] = []
        self.unreadable_rows = 0
        """Rows of an existing metrics.csv that did not parse (resume only); they are dropped."""
        if resume_step is not None:
            # TensorBoard drops the events with step >= the START step: the checkpoint's own
            # step (its eval, its last logs) is kept, what a killed run wrote after it is not.
            self._writer.add_event(event_pb2.Event(
                wall_time=time.time(), step=resume_step + 1,
                session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))
            self.eval_rows = [r for r in self._read_csv() if r[0] <= resume_step]

    def scalars(self, values: dict[str, float], step: int, writer=None) -> None:
        summary = summary_pb2.Summary(value=[
            summary_pb2.Summary.Value(tag=tag, simple_value=float(v)) for tag, v in values.items()])
        (writer or self._writer).add_event(event_pb2.Event(wall_time=time.time(), step=step,
                                                           summary=summary))

    def session_start(self, hparams: dict, trial: str, bn_networks: dict[str, str],
                      greedy: bool = False) -> None:
        """Record the run's settings (``flatten_settings``) for the HPARAMS dashboard, as trial
        ``trial``, and the CUSTOM SCALARS layout of ``bn_networks`` (diagnostics prefix -> what
        it is, e.g. ``{"Q": "critic"}``: the networks with BN layers); ``greedy``: the
        Q-network acts greedily, so it logs ``bn_Q_greedy_agreement``.

        Written at every (re)start and flushed at once; TensorBoard keeps the first one a run
        directory holds, so a resumed run stays one session: ``hparams`` must not hold what a
        resume may change (``config.RESUMABLE``), or the table would show the first value.
        """
        summary = hparams_summary.hparams_pb(hparams, trial_id=trial)
        self._session.add_event(event_pb2.Event(wall_time=time.time(), step=0, summary=summary))
        self._session.flush()
        layout = _layout(bn_networks, greedy)
        tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING,
                                        string_val=[layout.SerializeToString()])
        self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=0, summary=(
            summary_pb2.Summary(value=[summary_pb2.Summary.Value(
                tag=layout_metadata.CONFIG_SUMMARY_TAG, tensor=tensor,
                metadata=layout_metadata.create_summary_metadata())]))))
        self._writer.flush()

    def session_end(self, metrics: dict[str, float], step: int) -> None:
        """Write the run's final results as scalars (its HPARAMS metrics) and end the session."""
        self.scalars(metrics, step, self._session)
        end = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS,
                                             end_time_secs=time.time())
        summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(
            tag=metadata.SESSION_END_INFO_TAG, tensor=metadata.NULL_TENSOR,
            metadata=metadata.create_summary_metadata(
                plugin_data_pb2.HParamsPluginData(session_end_info=end)))])
        self._session.add_event(event_pb2.Event(wall_time=time.time(), step=step,
                                                summary=summary))
        self._session.flush()

    def eval_return(self, step: int, mean: float, std: float) -> None:
        self.scalars({"eval/mean_return": mean, "eval/std_return": std}, step)
        self._writer.flush()  # as durable as the metrics.csv row below
        self.eval_rows.append((step, mean, std))
        with atomic_open(self._csv, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["step", "eval_mean_return", "eval_std_return"])
            writer.writerows(self.eval_rows)

    def _read_csv(self) -> list[tuple[int, float, float]]:
        # bnrl writes the file atomically, so a row that does not parse was put there by
        # something else (an editor, a copy gone wrong): the rows that parse are kept and the
        # run resumes, rather than losing the run to a file it can rewrite.
        if not self._csv.exists():
            return []
        with open(self._csv, newline="", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()[1:]
        rows = []
        for row in csv.reader(lines):
            try:
                step, mean, std = row
                rows.append((int(step), float(mean), float(std)))
            except ValueError:
                self.unreadable_rows += 1
        return rows

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
        self._session.close()


def _layout(bn_networks: dict[str, str], greedy: bool) -> layout_pb2.Layout:
    """CUSTOM SCALARS: the return and losses, then per network with BN its seed-2 diagnostics and
    its train/eval gap (an absent tag draws nothing)."""
    def chart(title, *tags):
        return layout_pb2.Chart(title=title, multiline=layout_pb2.MultilineChartContent(
            tag=[f"^{tag}$" for tag in tags]))

    categories = [layout_pb2.Category(title="training", chart=[
        chart("evaluation return", "eval/mean_return"),
        chart("losses", "losses/.*"),
        chart("speed", "charts/updates_per_second", "charts/env_steps_per_second")])]
    for prefix, name in bn_networks.items():
        charts = [chart(f"bn_{prefix}_moving_mean, bn_{prefix}_moving_variance",
                        f"bn_{prefix}_moving_mean", f"bn_{prefix}_moving_variance"),
                  chart(f"bn_{prefix}_gamma, bn_{prefix}_beta", f"bn_{prefix}_gamma",
                        f"bn_{prefix}_beta")]
        if prefix == "Q":
            charts.insert(0, chart("bn_Q_train_eval_gap: |Q(batch stats) - Q(moving stats)|",
                                   "bn_Q_train_eval_gap"))
            if greedy:
                charts.insert(1, chart("bn_Q_greedy_agreement: same greedy action with batch "
                                       "and moving stats", "bn_Q_greedy_agreement"))
        categories.append(layout_pb2.Category(title=f"BN of the {name} (bn_{prefix}_*)",
                                              chart=charts))
    return layout_pb2.Layout(category=categories)
