"""The building blocks every algorithm's update is assembled from, and its schedule.

An algorithm's ``build_update(batch, noise, steps)`` reads top to bottom like a CleanRL training
step: TD target (``critic_pass`` + ``td_target``) -> critic step with the BN updates of its one
training-mode pass (``critic_update``) -> when ``steps`` has them, the delayed actor step
(``gradient_step``) -> temperature step (``temperature_step``) -> target update
(``target_update``). The runner builds one such function per phase of the algorithm's
``Schedule`` (which steps run at update ``i``). Every block is a function of the tensors it is
given (the batch's input tensors and noise drawn outside, never placeholders read from ``self``),
so that a phase is one function of its inputs, with nothing shared between phases but
variables and optimizers.

Order inside the one ``sess.run`` is explicit: critic step -> actor step (its critic reads see the
new critic, as in SB3 and CleanRL) -> temperature step -> target update. It is threaded through
``after`` (``tf.identity``) or through control dependencies of model calls and assign ops, never by
building optimizer ops inside ``control_dependencies`` blocks (that made Grappler find a cycle and
skip passes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from bnrl.networks import batch_statistics_call, keras, tf, training_call, with_updates


@dataclass(frozen=True)
class Batch:
    """The input tensors of one update (placeholders today; any tensors will do).

    An algorithm's batch has the fields its ``batch_keys`` name; the others are None.
    ``discount`` is the per-row bootstrap factor gamma^m of n-step returns (DQN's ``n_steps``);
    None for one-step targets, whose graph is then what it was before n-step returns existed.
    ``target`` is a TD target computed before the update and fed with the batch (PQN's Q(lambda)
    returns, computed over its whole rollout), for algorithms whose batch has no ``reward``,
    ``next_obs`` and ``done``.
    """

    obs: tf.Tensor
    action: tf.Tensor
    reward: tf.Tensor | None = None
    next_obs: tf.Tensor | None = None
    done: tf.Tensor | None = None
    discount: tf.Tensor | None = None
    target: tf.Tensor | None = None

    KEYS = ("obs", "action", "reward", "next_obs", "done", "discount", "target")

    def names(self) -> tuple[str, ...]:
        """The names of the tensors this batch has (``discount`` only with n-step returns)."""
        return tuple(key for key in self.KEYS if getattr(self, key) is not None)

    def tensors(self) -> tuple:
        """The tensors in field order (``batch.rebuilt(batch.tensors())`` rebuilds it)."""
        return tuple(getattr(self, key) for key in self.names())

    def rebuilt(self, tensors) -> Batch:
        """A batch of the same fields holding ``tensors`` (in ``tensors()`` order)."""
        return Batch(**dict(zip(self.names(), tensors, strict=True)))


def after(deps, tensor):
    """``tensor`` (any nesting) made to wait for ``deps`` through ``tf.identity``."""
    deps = [d for d in tf.nest.flatten(deps) if d is not None]
    with tf.control_dependencies(deps):
        return tf.nest.map_structure(tf.identity, tensor)


# ------------------------------------------------------------------------------- TD target
@dataclass(frozen=True)
class CriticPass:
    """What the critic pass of one update computed.

    Attributes:
      q: the online critic's output on the batch, from its one training-mode call: the Q that
        the critic loss trains.
      q_next: the bootstrap critic's output on the next inputs, gradient stopped.
      q_next_online: the online critic's output on the next inputs in the bootstrap mode
        (double-Q argmax), gradient stopped; None unless asked for.
      updates: the BN update ops of exactly the training-mode call (run them with the step).
      inputs: the inputs of that call (``concat([x, x'])`` for a joint pass), for the
        train/eval gap.
    """

    q: tf.Tensor
    q_next: tf.Tensor
    q_next_online: tf.Tensor | None
    updates: list
    inputs: object


def joint(inputs, next_inputs):
    """``concat([x, x'])`` row-wise for each input tensor (same nesting as ``inputs``)."""
    return tf.nest.map_structure(lambda x, y: tf.concat([x, y], 0), inputs, next_inputs)


def call_in_mode(model: keras.Model, inputs, mode: str):
    """``model`` on ``inputs`` with BN in ``mode``: ``training`` (batch statistics of ``inputs``,
    no statistics update) or ``inference`` (moving statistics)."""
    if mode == "training":
        return batch_statistics_call(model, inputs)
    return model(inputs, training=False)


def _next_half(joint_output):
    return tf.split(joint_output, 2, axis=0)[1]


def critic_pass(critic: keras.Model, inputs, next_inputs, target: keras.Model | None,
                config, online_next: bool = False) -> CriticPass:
    """The critic's one training-mode call and the bootstrap values of the TD target.

    ``config.critic_batch == "joint"`` runs the training-mode call once on ``concat([x, x'])``
    and splits it (CrossQ, Bhatt et al. 2024): one set of batch statistics, and one statistics
    update per step, from both halves; ``separate``: the call sees ``x`` alone. The bootstrap
    network is ``target``, or the online critic itself when ``target`` is None. With
    ``config.bootstrap_mode == "training"`` it runs in training mode: BN normalizes with the batch
    statistics of the rows it sees (``x'``; the joint batch with a joint pass, so that bootstrap
    and trained Q are normalized alike) and its moving statistics are not updated; with
    ``inference``, it normalizes with the moving statistics.

    Args:
      critic: the online critic / Q-network.
      inputs: its inputs on the batch (``[obs, action]`` or ``obs``).
      next_inputs: the same on the next states (``[next_obs, next_action]`` or ``next_obs``).
      target: the target network, or None to bootstrap from the online critic.
      config: the agent's resolved config (``critic_batch``, ``bootstrap_mode``).
      online_next: also compute the online critic's output on ``next_inputs`` in the bootstrap
        mode (double Q).
    """
    joint_batch = config.critic_batch == "joint"
    bootstrap_training = config.bootstrap_mode == "training"
    if target is None and joint_batch and not bootstrap_training:
        raise ValueError("a joint pass bootstraps from its own training-mode output: "
                         "bootstrap_training must be True without a target network")
    need_online_next = online_next or target is None
    early = None
    if need_online_next and not bootstrap_training:
        # Reads the online moving statistics: the training call, whose update ops write them,
        # is built to run after it.
        early = critic(next_inputs, training=False)
    both = joint(inputs, next_inputs) if joint_batch else None
    with tf.control_dependencies([early] if early is not None else []):
        if joint_batch:
            q_joint, updates = training_call(critic, both)
            q = tf.split(q_joint, 2, axis=0)[0]
        else:
            q, updates = training_call(critic, inputs)
    online = early
    if need_online_next and early is None:
        online = (_next_half(q_joint) if joint_batch
                  else batch_statistics_call(critic, next_inputs))
    if target is None:
        q_next = online
    elif joint_batch and bootstrap_training:
        q_next = _next_half(batch_statistics_call(target, both))
    else:
        q_next = call_in_mode(target, next_inputs, config.bootstrap_mode)
    return CriticPass(q=q, q_next=tf.stop_gradient(q_next),
                      q_next_online=tf.stop_gradient(online) if online_next else None,
                      updates=updates, inputs=both if joint_batch else inputs)


def td_target(reward, done, gamma, next_value):
    """``r + gamma * (1 - done) * V(s')`` with the gradient stopped.

    ``done`` is 1 only for true terminations: a time-limit truncation bootstraps. ``gamma`` is a
    number, or a per-row tensor (n-step returns: gamma^m, ``Batch.discount``).
    """
    return tf.stop_gradient(reward + gamma * (1.0 - done) * next_value)


# ------------------------------------------------------------------------------------ steps
def adam(lr: float, beta1: float = 0.9, beta2: float = 0.999):
    """A fresh Adam optimizer (never a default argument: each network needs its own slots)."""
    return tf.compat.v1.train.AdamOptimizer(lr, beta1=beta1, beta2=beta2)


class RAdamOptimizer(tf.compat.v1.train.Optimizer):
    """Rectified Adam (Liu et al., ICLR 2020, "On the Variance of the Adaptive Learning Rate and
    Beyond") as a ``tf.compat.v1.train.Optimizer``: TensorFlow has none (TF Addons' is gone).

    PQN trains with it (purejaxql's ``optax.radam``, CleanRL's ``torch.optim.RAdam``). Written
    as optax's ``scale_by_radam``: ``m`` and ``v`` as Adam's; with ``rho_inf = 2 / (1 - beta2) -
    1`` and ``rho_t = rho_inf - 2 t beta2^t / (1 - beta2^t)``, the step is ``lr * r_t * m_hat /
    (sqrt(v_hat) + eps)`` once ``rho_t >= 5``, with the rectifier ``r_t = sqrt((rho_t - 4)
    (rho_t - 2) rho_inf / ((rho_inf - 4) (rho_inf - 2) rho_t))``, and ``lr * m_hat`` (momentum
    SGD) before: the variance of the adaptive term is too large to trust over the first steps,
    and ``r_t`` then rises from about 0.2 at step 100 to 0.65 at step 1,000 (a built-in warm-up).
    The step count is a float32 variable of the optimizer, saved with it.
    """

    def __init__(self, learning_rate, beta1: float = 0.9, beta2: float = 0.999,
                 epsilon: float = 1e-8, threshold: float = 5.0, name: str = "RAdam"):
        super().__init__(use_locking=False, name=name)
        self._lr, self._beta1, self._beta2 = learning_rate, beta1, beta2
        self._epsilon, self._threshold = epsilon, threshold

    def _create_slots(self, var_list):
        first = min(var_list, key=lambda v: v.name)  # as Adam: one device for the counter
        self._create_non_slot_variable(initial_value=0.0, name="step", colocate_with=first)
        for v in var_list:
            self._zeros_slot(v, "m", self._name)
            self._zeros_slot(v, "v", self._name)

    def _step(self) -> tf.Variable:
        with tf.init_scope():
            graph = None if tf.executing_eagerly() else tf.compat.v1.get_default_graph()
        return self._get_non_slot_variable("step", graph=graph)

    def _prepare(self):
        self._lr_t = tf.convert_to_tensor(self._call_if_callable(self._lr), name="learning_rate")

    def _resource_apply_dense(self, grad, var):
        b1, b2 = self._beta1, self._beta2
        t = self._step().read_value() + 1.0
        m = self.get_slot(var, "m")
        v = self.get_slot(var, "v")
        m_t = m.assign(b1 * m + (1.0 - b1) * grad, read_value=True)
        v_t = v.assign(b2 * v + (1.0 - b2) * tf.square(grad), read_value=True)
        b2_t = tf.pow(b2, t)
        m_hat = m_t / (1.0 - tf.pow(b1, t))
        v_hat = v_t / (1.0 - b2_t)
        rho_inf = 2.0 / (1.0 - b2) - 1.0
        rho_t = rho_inf - 2.0 * t * b2_t / (1.0 - b2_t)
        # The rectifier's radicand is negative below the threshold: clamp it, tf.where takes the
        # momentum branch there.
        r_t = tf.sqrt(tf.maximum((rho_t - 4.0) * (rho_t - 2.0) * rho_inf, 0.0)
                      / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
        step = tf.where(rho_t >= self._threshold,
                        r_t * m_hat / (tf.sqrt(v_hat) + self._epsilon), m_hat)
        return var.assign_sub(tf.cast(self._lr_t, var.dtype.base_dtype) * step).op

    def _apply_dense(self, grad, var):
        return self._resource_apply_dense(grad, var)

    def _resource_apply_sparse(self, grad, handle, indices):
        raise NotImplementedError("RAdamOptimizer: sparse gradients (bnrl's networks have none)")

    def _finish(self, update_ops, name_scope):
        with tf.control_dependencies(update_ops):
            step = self._step()
            count = step.assign_add(1.0, read_value=False)
        return tf.group(*update_ops, count, name=name_scope)


OPTIMIZERS = ("adam", "radam")
"""Optimizers an agent may pick (``optimizer`` settings): Adam, or RAdam (``RAdamOptimizer``)."""


def make_optimizer(kind: str, lr, beta1: float = 0.9):
    """A fresh ``adam`` or ``radam`` optimizer of learning rate ``lr`` (a number or a tensor)."""
    if kind == "radam":
        return RAdamOptimizer(lr, beta1=beta1)
    return adam(lr, beta1)


def minimize(optimizer, loss, variables: Sequence):
    """``apply_gradients`` of ``loss`` w.r.t. ``variables`` (skipping those with no gradient)."""
    grads = optimizer.compute_gradients(loss, var_list=list(variables))
    grads = [(g, v) for g, v in grads if g is not None]
    return optimizer.apply_gradients(grads)


def gradient_step(optimizer, loss, variables: Sequence, bn_updates: Sequence,
                  clip_norm: float | None = None, name: str = "step") -> tf.Operation:
    """One optimizer step on ``loss`` grouped with the BN updates of its training-mode call.

    Args:
      optimizer: a ``tf.compat.v1.train.Optimizer``.
      loss: scalar loss.
      variables: the variables it trains.
      bn_updates: update ops of the training-mode call the loss was computed from.
      clip_norm: clip the gradients to this global norm (DQN, SB3's ``max_grad_norm``).
      name: name of the grouped op.
    """
    if clip_norm is None:
        step = minimize(optimizer, loss, variables)
    else:
        grads, var_list = zip(*optimizer.compute_gradients(loss, list(variables)), strict=True)
        grads, _ = tf.clip_by_global_norm(grads, clip_norm)
        step = optimizer.apply_gradients(zip(grads, var_list, strict=True))
    return with_updates(step, bn_updates, name=name)


def critic_update(optimizer, loss, q, critic: keras.Model, values: CriticPass,
                  loss_name: str = "losses/critic_loss", clip_norm: float | None = None,
                  name: str = "critic_step") -> Update:
    """The critic step on ``loss`` with the BN updates of the critic pass, as the start of the
    phase's ``Update`` (scalars: the loss and the mean of ``q``, the trained Q)."""
    step = gradient_step(optimizer, loss, critic.trainable_variables, values.updates,
                         clip_norm=clip_norm, name=name)
    return Update(critic_step=step,
                  critic_scalars={loss_name: loss, "losses/q_values": tf.reduce_mean(q)},
                  critic_inputs=values.inputs)


def temperature_step(optimizer, loss, log_alpha: tf.Variable, actor_step: tf.Operation):
    """SAC's automatic entropy tuning step (Haarnoja et al. 2018b) on ``loss``, ordered after
    ``actor_step`` so that the actor reads the temperature before it moves."""
    grads = after(actor_step, tf.gradients(loss, [log_alpha]))
    return optimizer.apply_gradients(zip(grads, [log_alpha], strict=True))


# ----------------------------------------------------------------------------------- targets
def target_update_ops(online: keras.Model, target: keras.Model, tau, bn_policy: str):
    """Polyak the target's weights towards ``online``; its BN statistics follow ``bn_policy``.

    All of the model's variables are covered, not only ``trainable_variables``: otherwise the
    target's moving statistics stay at 0/1 for ever (SB3 GH #996).

    Args:
      online: the online network.
      target: its copy, same builder and sizes.
      tau: polyak coefficient for trainable weights (1.0 = hard copy).
      bn_policy: ``copy`` (tau 1 for non-trainable variables), ``polyak``, or ``frozen``.

    Returns:
      A list of assign ops.
    """
    ops = []
    trainable = {v.ref() for v in online.trainable_weights}
    for src, dst in zip(online.weights, target.weights, strict=True):
        if src is dst:  # a layer both share (SimBa's running observation statistics)
            continue
        if src.shape != dst.shape:
            raise ValueError(f"target variable {dst.name} does not match {src.name}")
        if src.ref() in trainable:
            rate = tau
        elif bn_policy == "copy":
            rate = 1.0
        elif bn_policy == "polyak":
            rate = tau
        else:
            continue
        value = src if rate == 1.0 else (1.0 - rate) * dst + rate * src
        ops.append(dst.assign(value, read_value=False))
    return ops


def target_update(pairs: Sequence, tau: float, bn_policy: str, steps: Sequence) -> list:
    """Target update ops of every (online, target) pair, reading the online networks after
    ``steps`` (the optimizer steps and BN updates of the same update)."""
    with tf.control_dependencies(list(steps)):
        return [op for online, target in pairs
                for op in target_update_ops(online, target, tau, bn_policy)]


# --------------------------------------------------------------------------------- schedule
CRITIC, ACTOR, TARGET = "critic", "actor", "target"


@dataclass(frozen=True)
class Schedule:
    """Which steps run at update ``i`` (counted from 0) and whether that update is complete.

    The critic step runs at every update; the actor step (with the temperature step) at every
    ``actor_every``-th, the target update at every ``target_every``-th (SB3 counts the same way:
    update ``i`` runs them when ``(i + 1) % every == 0``). Each distinct set of steps is one
    phase, built as its own train op.

    Attributes:
      actor_every: updates per actor step; None when the agent has no actor (DQN).
      target_every: updates per target update; None without target networks.
    """

    actor_every: int | None = None
    target_every: int | None = None

    @classmethod
    def actor_critic(cls, policy_delay: int, targets: bool) -> Schedule:
        """The actor and the targets move on every ``policy_delay``-th update (SB3, TD3)."""
        return cls(actor_every=policy_delay, target_every=policy_delay if targets else None)

    def steps_at(self, i: int) -> tuple[str, ...]:
        """The steps update ``i`` runs, in order, e.g. ``("critic", "actor", "target")``."""
        out = [CRITIC]
        if self.actor_every is not None and (i + 1) % self.actor_every == 0:
            out.append(ACTOR)
        if self.target_every is not None and (i + 1) % self.target_every == 0:
            out.append(TARGET)
        return tuple(out)

    def phase(self, i: int) -> str:
        """The name of update ``i``'s phase: its steps joined by ``+``."""
        return "+".join(self.steps_at(i))

    def period(self) -> int:
        """Updates after which the sequence of phases repeats."""
        return math.lcm(self.actor_every or 1, self.target_every or 1)

    def phases(self) -> dict[str, tuple[str, ...]]:
        """Every phase some update runs, in order of first use, with its steps."""
        return {self.phase(i): self.steps_at(i) for i in range(self.period())}

    def is_complete(self, i: int) -> bool:
        """Whether update ``i`` computes every loss (the actor's too), so a log reports all."""
        return self.actor_every is None or ACTOR in self.steps_at(i)


@dataclass
class Update:
    """The steps one phase of an algorithm's update built (its ``build_update`` result).

    Attributes:
      critic_step: the critic step with its BN updates.
      critic_scalars: scalars of the critic step (losses, Q means), by TensorBoard tag.
      critic_inputs: inputs of the critic's training-mode call (the train/eval gap uses them).
      actor_step: the actor step, temperature step included; None when the phase has none.
      actor_scalars: scalars of the actor step.
      target_step: the target update ops; empty when the phase has none.
      td_target: the critic's TD target (per row), for the exact tests; None unless the
        algorithm sets it (DQN).
    """

    critic_step: tf.Operation
    critic_scalars: dict
    critic_inputs: object
    actor_step: tf.Operation | None = None
    actor_scalars: dict = field(default_factory=dict)
    target_step: list = field(default_factory=list)
    td_target: tf.Tensor | None = None

    def optimizer_steps(self) -> list[tf.Operation]:
        """The optimizer steps in the order they run."""
        return [self.critic_step] + ([self.actor_step] if self.actor_step is not None else [])

    def ops(self) -> list[tf.Operation]:
        """Everything the phase runs: the optimizer steps, then the target update."""
        return self.optimizer_steps() + list(self.target_step)

    def scalars(self) -> dict:
        return {**self.critic_scalars, **self.actor_scalars}
