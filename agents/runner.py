"""The update runner: an algorithm's update built once per phase and run one ``sess.run`` at a
time.

``UpdateRunner`` takes an ``Algorithm`` and the batch's placeholders and builds, in the agent's
graph: one train op per phase of the algorithm's ``Schedule`` (each XLA-compiled when
``xla_single_update`` is on), the update counter at the end of each, the BN diagnostics read after
each phase's step (with the train/eval gap of the critic's training-mode pass), and, for
``gradient_steps > 1``, the multi-update loop that runs K updates in one call. Every train op is
checked with ``networks.check_wiring``, so that no BN layer is left stale or updated twice. Once
the session exists, ``bind`` makes the callables; ``update`` and ``update_many`` run them.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from bnrl.agents.algorithm import Algorithm
from bnrl.agents.update import Batch, Update, after
from bnrl.networks import (
    Norm,
    batch_statistics_call,
    bn_diagnostics,
    check_wiring,
    session_callable,
    tf,
)


class UpdateRunner:
    """Train ops of every phase, the multi-update loop, diagnostics and the update counter.

    Args:
      algorithm: the agent's algorithm (networks, schedule, ``build_update``).
      batch: the placeholders of one batch.
      name: the agent's name, for error messages.
    """

    def __init__(self, algorithm: Algorithm, batch: Batch, name: str):
        self.algorithm, self.batch, self.name = algorithm, batch, name
        self.config, self.schedule = algorithm.config, algorithm.schedule
        self.num_updates = algorithm.num_updates
        noise = algorithm.noise(tf.shape(batch.obs)[0], self.num_updates)
        self.noise_names = list(noise)
        self.train_ops, self.scalars, self.updates = self._build_train_ops(batch, noise)
        self.train_ops = self._build_counter(self.train_ops)
        self.diagnostics = self._build_diagnostics()
        self.multi = self._build_multi_update() if self.config.gradient_steps > 1 else None
        self._build_wiring_check()
        # Each call fetches the counter as its update left it: the runner's count is the graph's.
        self.counts = {phase: self._counted(op) for phase, op in self.train_ops.items()}
        if self.multi is not None:
            self.multi["count"] = self._counted(self.multi["op"])
        self.updates_done = 0

    # --------------------------------------------------------------------------- graph building
    def _build_variant(self, batch: Batch, noise: dict, steps: tuple[str, ...]):
        """``(train_op, scalars, update)`` of one phase, as a function of its input tensors."""
        update = self.algorithm.build_update(batch, noise, steps)
        return (tf.group(*update.ops(), name="step_" + "_".join(steps)), update.scalars(),
                update)

    def _build_train_ops(self, batch: Batch, noise: dict):
        """One train op per phase of the schedule, with its scalars and its ``Update``; each
        compiled with XLA when ``xla_single_update`` is on."""
        build = (self._build_compiled_variant if self._compile_single_updates()
                 else self._build_variant)
        ops, scalars, updates = {}, {}, {}
        for phase, steps in self.schedule.phases().items():
            ops[phase], scalars[phase], updates[phase] = build(batch, noise, steps)
        return ops, scalars, updates

    def _compile_single_updates(self) -> bool:
        """``xla_single_update``, its null decided here, where the networks are known: compiled
        exactly when ``xla`` is on and a network has BN layers but no convolutions (XLA's CPU
        convolutions made BN Q-networks on images 1.1-1.4x slower than the plain graph;
        benchmarks/README.md)."""
        c = self.config
        if c.xla_single_update is not None:
            return c.xla_single_update
        return (c.xla and any(Norm(kind).is_batch for kind in c.norm_kinds())
                and not self.algorithm.networks.convolutional)

    def _build_compiled_variant(self, batch: Batch, noise: dict, steps: tuple[str, ...]):
        """``_build_variant`` as one XLA-compiled function called on ``batch`` and ``noise``:
        the call op is the train op, its outputs the scalars and the critic's training-mode
        inputs (for the train/eval gap, read after the call).

        Inside a function every stateful op runs (automatic control dependencies), so the
        phase's BN updates run whether or not they are grouped into its steps; ``check_wiring``
        looks inside the function for updates made twice.
        """

        def phase(tensors, noise):
            op, _, update = self._build_variant(self.batch.rebuilt(tensors), noise, steps)
            return after(op, (update.critic_scalars, update.actor_scalars, update.critic_inputs))

        fn = tf.function(phase, jit_compile=True, autograph=False)
        critic_scalars, actor_scalars, inputs = fn(batch.tensors(), noise)
        call = tf.nest.flatten(critic_scalars)[0].op
        update = Update(critic_step=call, critic_scalars=critic_scalars, critic_inputs=inputs,
                        actor_step=call if actor_scalars else None, actor_scalars=actor_scalars)
        return call, update.scalars(), update

    def _build_counter(self, train_ops: dict) -> dict:
        """Count the update at the very end of every phase, after all of its ops: every read
        of the counter inside a step (noise seeds, Batch Renorm warm-up) then sees the pre-step
        value, in whatever order the ops run."""
        counted = {}
        for phase, op in train_ops.items():
            with tf.control_dependencies([op]):
                count = self.num_updates.assign_add(1, read_value=False)
            counted[phase] = tf.group(op, count, name="train_" + phase.replace("+", "_"))
        return counted

    def _build_multi_update(self) -> dict:
        """K gradient steps in one ``sess.run`` (``update_many``), for ``gradient_steps > 1``.

        The K batches are fed stacked ``[K, batch, ...]`` (sampled in Python from the replay
        buffer, as K single updates would sample them). One function (XLA-compiled with ``xla``)
        runs a ``tf.while_loop`` whose body is the very phase functions of the single path,
        picking update ``i``'s phase in the graph from the schedule's period; the noise of the
        K steps is drawn outside, from the same per-step seeds. Each step's scalars come out as
        one row of ``[K, len(names)]`` (zero where that step's phase has no such scalar).
        Values captured from outside (Batch Renorm's warm-up clipping) are read once per call:
        ``update_many`` splits a round at the warm-up boundary.
        """
        stacked = self.batch.rebuilt([
            tf.compat.v1.placeholder(p.dtype, [None] + p.shape.as_list(), "many_" + p.op.name)
            for p in self.batch.tensors()])
        k, rows = tf.shape(stacked.obs)[0], tf.shape(stacked.obs)[1]
        first = tf.cast(self.num_updates, tf.int32)
        noise = {}
        if self.noise_names:
            noise = tf.map_fn(lambda j: self.algorithm.noise(rows, first + j), tf.range(k),
                              fn_output_signature={name: tf.float32 for name in self.noise_names})
        phases = self.schedule.phases()
        names = list(dict.fromkeys(n for s in self.scalars.values() for n in s))
        period = self.schedule.period()
        index = {phase: i for i, phase in enumerate(phases)}
        table = [index[self.schedule.phase(i)] for i in range(period)]

        def step(batch: Batch, noise: dict, steps: tuple[str, ...]):
            op, scalars, _ = self._build_variant(batch, noise, steps)
            return after(op, tf.stack([tf.cast(scalars[name], tf.float32) if name in scalars
                                       else tf.constant(0.0) for name in names]))

        def loop(tensors, noise, first):
            n = tf.shape(tensors[0])[0]

            def body(j, values):
                batch = self.batch.rebuilt([t[j] for t in tensors])
                step_noise = {name: t[j] for name, t in noise.items()}
                branches = [functools.partial(step, batch, step_noise, steps)
                            for steps in phases.values()]
                if len(branches) == 1:
                    row = branches[0]()
                else:
                    row = tf.switch_case(tf.gather(table, (first + j) % period), branches)
                return j + 1, values.write(j, row)

            _, values = tf.while_loop(lambda j, _: j < n, body,
                                      (tf.constant(0), tf.TensorArray(tf.float32, size=n)),
                                      maximum_iterations=n)
            return values.stack()

        fn = tf.function(loop, jit_compile=self.config.xla, autograph=False)
        values = fn(stacked.tensors(), noise, first)
        with tf.control_dependencies([values.op]):
            count = self.num_updates.assign_add(tf.cast(k, self.num_updates.dtype),
                                                read_value=False)
        return {"op": tf.group(values.op, count, name="train_many"), "values": values,
                "names": names, "placeholders": stacked.tensors()}

    def _build_wiring_check(self) -> None:
        ops = dict(self.train_ops)
        if self.multi is not None:
            ops["multi-update loop"] = self.multi["op"]
        miswired = []
        for phase, op in ops.items():
            problems = check_wiring(op, self.algorithm.networks.trained)
            if problems:
                miswired.append(f"{self.name} train op '{phase}' is miswired: "
                                + "; ".join(problems))
        if miswired:
            raise RuntimeError(" | ".join(miswired))

    def _build_diagnostics(self) -> dict:
        """BN diagnostics per phase, read after that phase's step, with the gap between Q
        with batch statistics and with moving statistics on the rows the critic's training-mode
        pass saw (the joint batch with ``critic_batch=joint``), read after its critic step.
        A Q-network acting greedily (DQN, PQN) also gets the share of those rows whose greedy
        action is the same with both: it acts on moving statistics, so where action gaps are
        small next to the gap, it acts on another Q-function than the one it trains."""
        networks = self.algorithm.networks
        greedy = self.algorithm.head_class.action_space == "discrete"
        diagnostics = {}
        for phase, op in self.train_ops.items():
            diag = dict(bn_diagnostics(networks.critics, "Q", after=op))
            diag.update(bn_diagnostics(networks.actors, "pi", after=op))
            if "bn_Q_moving_mean" in diag:
                update = self.updates[phase]
                # Built inside the block so that every variable read of both calls (weights and
                # moving statistics) follows the critic step and its BN updates.
                with tf.control_dependencies([update.critic_step]):
                    q_batch = batch_statistics_call(networks.critics[0], update.critic_inputs)
                    q_moving = networks.critics[0](update.critic_inputs, training=False)
                diag["bn_Q_train_eval_gap"] = tf.reduce_mean(tf.abs(q_batch - q_moving))
                if greedy:
                    same = tf.equal(tf.argmax(q_batch, axis=1), tf.argmax(q_moving, axis=1))
                    diag["bn_Q_greedy_agreement"] = tf.reduce_mean(tf.cast(same, tf.float32))
            diagnostics[phase] = diag
        return diagnostics

    def _counted(self, op: tf.Operation) -> tf.Tensor:
        """The update counter as it stands after ``op`` (fetched with it)."""
        with tf.control_dependencies([op]):
            return self.num_updates.read_value()

    # ------------------------------------------------------------------------------ running
    def bind(self, sess: tf.compat.v1.Session) -> None:
        """Make the callables of every train op in ``sess`` (after its variables are set)."""
        self._train_fns = {}
        for phase in self.train_ops:
            for log in (False, True):
                names, fetches, feeds = self.update_call(phase, log)
                self._train_fns[phase, log] = names, session_callable(sess, fetches, feeds)
        self._many_fn = None
        if self.multi is not None:
            self._many_fn = session_callable(sess, *self.many_call())
        self._read_counter = sess.make_callable(self.num_updates)
        self.sync()

    def sync(self) -> None:
        """Read the update counter from the graph (after a restore)."""
        self.updates_done = int(self._read_counter())

    def update_call(self, phase: str, log: bool) -> tuple[list[str], list, list]:
        """``(names, fetches, feeds)`` of one update of ``phase``: the counter after it, then the
        scalars ``names`` (with ``log``, the BN diagnostics too); fed the batch's placeholders
        (``feed``). ``agents.group`` joins several agents' into one ``sess.run``."""
        names = list(self.scalars[phase])
        fetches = [self.counts[phase]] + [self.scalars[phase][n] for n in names]
        if log:
            names += list(self.diagnostics[phase])
            fetches += list(self.diagnostics[phase].values())
        return names, fetches, list(self.batch.tensors())

    def feed(self, batch: dict) -> list[np.ndarray]:
        """``batch``'s arrays in the order of ``update_call``'s feeds."""
        return [batch[key] for key in self.batch.names()]

    def phase(self) -> str:
        """The schedule's phase of the next update."""
        return self.schedule.phase(self.updates_done)

    def updated(self, names: list[str], results: Sequence) -> dict[str, float]:
        """The scalars of an update from what its ``update_call`` fetched, by name; the counter
        moves to the one fetched."""
        count, *values = results
        self.updates_done = int(count)
        return {n: float(np.mean(v)) for n, v in zip(names, values, strict=True)}

    def update(self, batch: dict, log: bool = False) -> dict[str, float]:
        """One gradient step on ``batch`` (arrays ``obs, action, reward, next_obs, done``): a
        single ``sess.run`` of the phase the schedule gives this update; with ``log``, also
        the BN diagnostics and the train/eval gap read from this very step."""
        names, fn = self._train_fns[self.phase(), log]
        return self.updated(names, fn(*self.feed(batch)))

    def many_call(self) -> tuple[list, list]:
        """``(fetches, feeds)`` of the multi-update loop: the counter after it and the steps'
        scalars, fed the stacked batches (``feed_many``).

        Raises:
          RuntimeError: the agent was built with ``gradient_steps = 1`` (no loop in its graph).
        """
        if self.multi is None:
            raise RuntimeError(f"{self.name}: update_many needs an agent built with "
                               "gradient_steps > 1 (the multi-update loop is built only then)")
        return [self.multi["count"], self.multi["values"]], list(self.multi["placeholders"])

    def feed_many(self, block: Sequence[dict]) -> list[np.ndarray]:
        """The batches of one call of the loop, stacked in the order of ``many_call``'s feeds."""
        return [np.stack([b[key] for b in block]) for key in self.batch.names()]

    def updated_many(self, results: Sequence) -> list[dict[str, float]]:
        """Per step, the scalars of the phase that step ran, from what ``many_call`` fetched;
        the counter moves to the one fetched."""
        count, values = results
        names, first = self.multi["names"], self.updates_done
        out = []
        for i, row in enumerate(values):
            phase = self.schedule.phase(first + i)
            out.append({n: float(row[names.index(n)]) for n in self.scalars[phase]})
        self.updates_done = int(count)
        return out

    def update_many(self, batches: Sequence[dict]) -> list[dict[str, float]]:
        """One gradient step per batch, all in one ``sess.run`` of the multi-update loop; the
        same updates as ``update`` on each batch in turn (bit for bit with ``xla=false``).

        Returns:
          Per step, the scalars of the phase that step ran, by name.

        Raises:
          RuntimeError: the agent was built with ``gradient_steps = 1`` (no loop in its graph).
        """
        self.many_call()  # refuses an agent without the loop
        out = []
        for block in self.warmup_blocks(list(batches)):
            out += self.updated_many(self._many_fn(*self.feed_many(block)))
        return out

    def warmup_blocks(self, batches: list) -> list[list]:
        """``batches`` split where update ``renorm_warmup`` starts: the loop reads Batch
        Renorm's warm-up clipping once per call."""
        cut = self.config.renorm_warmup - self.updates_done
        if 0 < cut < len(batches):
            return [batches[:cut], batches[cut:]]
        return [batches] if batches else []
