"""Batch Normalization update machinery for hand-built Session training loops.

Keras BatchNormalization creates its moving-average update ops when the layer is *called*, bound
to that call's inputs, and never puts them in ``UPDATE_OPS`` (tensorflow#23873). A train op built
with ``optimizer.minimize(loss)`` therefore leaves moving mean/variance at 0/1 for ever. The fix
(tensorflow#26322) is to take the updates of the exact training-mode call with
``model.get_updates_for(inputs)`` and run them in the same ``sess.run`` as the optimizer step.

Public API:
  collect_updates(model, inputs)      update ops of the training-mode call on ``inputs``
  training_call(model, inputs)        call in training mode, return (outputs, its update ops)
  collection_updates(graph)           flat ``UPDATE_OPS`` (``tf.compat.v1.layers`` users)
  with_updates(step, updates)         one op running the optimizer step and the updates
  minimize_with_updates(...)          ``optimizer.minimize`` + updates, the seed-1 fix in one call
  check_wiring(train_op, models)      BN layers a train op leaves stale or updates twice
  bn_layers(model), bn_diagnostics(models, prefix)   the seed-2 scalars as graph tensors
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from bnrl.networks.backend import keras, require_keras2, tf

_ASSIGN_TYPES = frozenset({"AssignSubVariableOp", "AssignVariableOp", "AssignAddVariableOp"})
_STAT_NAMES = ("gamma", "beta", "moving_mean", "moving_variance")


class WiringError(RuntimeError):
    """A train op that would leave BN moving statistics stale, or update them twice."""


def _as_op(x) -> tf.Operation:
    return x if isinstance(x, tf.Operation) else x.op


def _flat_ops(updates) -> list[tf.Operation]:
    # The seed's add_to_collection(UPDATE_OPS, bn.updates) nests a list ("[[op, op]]"); flatten
    # any nesting and drop duplicates while keeping order.
    ops: list[tf.Operation] = []
    for item in tf.nest.flatten(updates):
        op = _as_op(item)
        if op not in ops:
            ops.append(op)
    return ops


def ancestors(fetches, stop: Iterable[tf.Operation] = ()) -> set[tf.Operation]:
    """Every op a ``sess.run(fetches)`` executes (data and control inputs, transitively).

    Args:
      fetches: ops or tensors (any nesting).
      stop: ops whose inputs are not followed (they are still included).
    """
    stop = set(stop)
    seen: set[tf.Operation] = set()
    stack = [_as_op(f) for f in tf.nest.flatten(fetches)]
    while stack:
        op = stack.pop()
        if op in seen:
            continue
        seen.add(op)
        if op in stop:
            continue
        stack.extend(t.op for t in op.inputs)
        stack.extend(op.control_inputs)
    return seen


def _moving_variable(op: tf.Operation):
    """The variable handle op an assign writes, or None for other ops."""
    return op.inputs[0].op if op.type in _ASSIGN_TYPES else None


def collect_updates(model: keras.layers.Layer, inputs) -> list[tf.Operation]:
    """The moving-average update ops of ``model``'s training-mode call on exactly ``inputs``.

    ``model.updates`` also holds the ops of the build call, bound to Keras' own Input placeholder
    (running them fails with "You must feed a value for placeholder input_1"); Keras'
    ``get_updates_for(inputs)`` leaves those out but returns the updates of *every* call reachable
    from any of the inputs. When that is more than one call per BN variable, the ops reachable
    from all of the inputs are kept; if that still does not single out one call (two training-mode
    calls sharing the tensor that reaches a BN layer), this raises rather than guess: build that
    call with ``training_call`` instead.

    Args:
      model: a tf-keras model or layer.
      inputs: the tensor(s) the training-mode call received (the same nesting as the call).

    Returns:
      A flat list of ops; empty when the model has no BN or the call was in inference mode.
    """
    require_keras2(model)
    flat_inputs = tf.nest.flatten(inputs)
    candidates = _flat_ops(model.get_updates_for(flat_inputs))
    _require_assigns(candidates)
    by_variable: dict = {}
    for op in candidates:
        by_variable.setdefault(_moving_variable(op), []).append(op)
    if all(len(ops) == 1 for ops in by_variable.values()):
        return candidates
    input_ops = {t.op for t in flat_inputs}
    narrowed = [op for op in candidates if input_ops <= ancestors(op)]
    counts: dict = {}
    for op in narrowed:
        counts[_moving_variable(op)] = counts.get(_moving_variable(op), 0) + 1
    if set(counts) != set(by_variable) or any(n != 1 for n in counts.values()):
        raise ValueError(
            f"model '{model.name}' was called in training mode more than once on tensors shared "
            "with these inputs, so their updates cannot be told apart: make the other calls "
            "training=False, or build the call with training_call(model, inputs)"
        )
    return narrowed


def _require_assigns(updates: list[tf.Operation]) -> None:
    if any(op.type not in _ASSIGN_TYPES for op in updates):
        raise ValueError(
            "these BN updates come from a call with a tensor `training` flag (conditional "
            "updates cannot be attributed to their variables): call the model with "
            "training=True or training=False")


def training_call(model: keras.layers.Layer, inputs, **kwargs):
    """Call ``model(inputs, training=True)`` and return ``(outputs, update_ops)`` of that call.

    Exact by construction: the updates are the model's update ops created by this very call, so
    other training-mode calls on shared tensors can never leak in.

    Args:
      model: a tf-keras model or layer.
      inputs: the call's inputs.
      **kwargs: further call arguments.
    """
    require_keras2(model)
    graph = tf.compat.v1.get_default_graph()
    n_before = len(graph.get_operations())
    outputs = model(inputs, training=True, **kwargs)
    created = set(graph.get_operations()[n_before:])
    updates = [op for op in _flat_ops(model.get_updates_for(tf.nest.flatten(inputs)))
               if op in created]
    return outputs, updates


def collection_updates(graph: tf.Graph | None = None, scope: str | None = None):
    """The ``UPDATE_OPS`` collection as a flat list of ops (``tf.compat.v1.layers`` BN fills it)."""
    graph = graph or tf.compat.v1.get_default_graph()
    return _flat_ops(graph.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS, scope))


def with_updates(step: tf.Operation, updates: Sequence, name: str = "train_op") -> tf.Operation:
    """One op that runs ``step`` and every op in ``updates`` in a single ``sess.run``.

    A ``tf.group`` rather than ``tf.control_dependencies(updates)`` around the optimizer: creating
    optimizer ops inside a control-dependency block made Grappler find a cycle and skip passes
    (9-25% slower; docs/keras-batchnorm.md). Both are equivalent here: the optimizer never writes
    moving statistics, and the updates read the batch moments the gradients also use.
    """
    return tf.group(step, *_flat_ops(updates), name=name)


def minimize_with_updates(
    optimizer, loss: tf.Tensor, updates: Sequence, var_list=None, name: str = "train_op"
) -> tf.Operation:
    """``optimizer.minimize(loss)`` that also applies the BN ``updates`` (the seed-1 fix).

    Args:
      optimizer: a ``tf.compat.v1.train.Optimizer``.
      loss: scalar loss.
      updates: from ``collect_updates`` / ``collection_updates``.
      var_list: variables to train (default: trainable variables the loss depends on).
    """
    return with_updates(optimizer.minimize(loss, var_list=var_list), updates, name=name)


def bn_layers(model: keras.layers.Layer) -> list[keras.layers.BatchNormalization]:
    """The BatchNormalization layers of ``model``, nested models included, in build order."""
    require_keras2(model)
    found: list[keras.layers.BatchNormalization] = []

    def visit(layer):
        if isinstance(layer, keras.layers.BatchNormalization) and layer not in found:
            found.append(layer)
        for sub in getattr(layer, "layers", ()):
            visit(sub)

    visit(model)
    return found


def _writers(ops: Iterable[tf.Operation], variable) -> list[tf.Operation]:
    handle = variable.handle.op
    return [op for op in ops if op.type in _ASSIGN_TYPES and op.inputs[0].op is handle]


def _batch_statistics(update: tf.Operation) -> set[tf.Operation]:
    """The batch-moment ops a moving-average update consumes.

    An update ``AssignSub(moving, (moving - batch_stat) * decay)`` lives in its own name scope;
    the inputs entering that scope from outside, other than the variable itself, are the batch
    statistics of the call, the same tensors the training-mode forward pass normalizes with.
    """
    scope = update.name.rsplit("/", 1)[0] + "/"
    inner, stats, stack = set(), set(), [update]
    while stack:
        for tensor in stack.pop().inputs:
            op = tensor.op
            if op.name.startswith(scope):
                if op not in inner:
                    inner.add(op)
                    stack.append(op)
            elif op.type not in ("VarHandleOp", "Const"):
                stats.add(op)
    return stats


def _call_scope(update: tf.Operation) -> str:
    """The name scope of the layer call that created ``update`` (unique per call)."""
    parts = update.name.split("/")
    for i, part in enumerate(parts):
        if part.startswith(("AssignMovingAvg", "AssignNewValue")):
            return "/".join(parts[:i])
    return update.name.rsplit("/", 1)[0]


def _training_calls(forward: set[tf.Operation]) -> set[str]:
    """Call scopes whose batch moments the forward pass computes (unfused and fused BN)."""
    scopes = set()
    for op in forward:
        if "/moments/" in op.name:
            scopes.add(op.name.split("/moments/", 1)[0])
        elif op.type.startswith("FusedBatchNorm") and op.get_attr("is_training"):
            scopes.add(op.name.rsplit("/", 1)[0])
    return scopes


def check_wiring(train_op, models: Sequence, raise_error: bool = False) -> list[str]:
    """Report BN layers whose moving statistics ``train_op`` leaves stale or updates twice.

    A layer is *used in training mode* by the train op when the train op's forward pass (not
    counting the update ops themselves) computes one of the layer's batch statistics. Such a layer
    must have its moving mean and variance written exactly once per ``sess.run(train_op)``: zero
    writes is the bug of both seeds, two writes is a critic called in training mode on ``(s, a)``
    and ``(s', a')`` with all of ``model.updates`` run.

    Args:
      train_op: the op (or list of fetches) run once per gradient step.
      models: the Keras models whose BN layers to check.
      raise_error: raise ``WiringError`` with all problems instead of returning them.

    Returns:
      One human-readable line per problem; empty when the wiring is right.
    """
    graph = _as_op(tf.nest.flatten(train_op)[0]).graph
    with graph.as_default():  # tf-keras reads layer.updates differently outside a graph
        layers = [layer for model in models for layer in bn_layers(model)]
        layer_updates = {layer: [_as_op(u) for u in layer.updates] for layer in layers}
    update_ops = {u for ops in layer_updates.values() for u in ops}
    forward = ancestors(train_op, stop=update_ops)
    executed = ancestors(train_op)
    training_calls = _training_calls(forward)
    problems = []
    for layer in layers:
        moving = [layer.moving_mean, layer.moving_variance]
        # A training-mode call feeds its batch statistics to both the loss and its update ops;
        # Batch Renorm's updates consume only renorm-path tensors, so its calls are found by
        # the batch moments computed in the update's own call scope.
        assigns = [u for u in layer_updates[layer] if u.type in _ASSIGN_TYPES]
        trained = any(_batch_statistics(u) & forward or _call_scope(u) in training_calls
                      for u in assigns)
        for variable in moving:
            writes = len(_writers(executed, variable))
            short = variable.name.split("/")[-1].split(":")[0]
            if trained and writes == 0:
                problems.append(
                    f"BN layer '{layer.name}' is used in training mode but its {short} is never "
                    "updated: add collect_updates(model, inputs) of that call to the train op"
                )
            elif writes > 1:
                problems.append(
                    f"BN layer '{layer.name}' has its {short} updated {writes} times per step: "
                    "collect the updates of one training-mode call only"
                )
    if problems and raise_error:
        raise WiringError("; ".join(problems))
    return problems


def bn_diagnostics(models: Sequence, prefix: str = "Q", after=None) -> dict[str, tf.Tensor]:
    """The seed-2 scalars: mean over BN layers of the L2 norm of each BN variable, and per layer.

    Keys: ``bn_<prefix>_gamma``, ``bn_<prefix>_beta``, ``bn_<prefix>_moving_mean``,
    ``bn_<prefix>_moving_variance`` and ``bn/<prefix>/<layer>/<variable>``. Empty when the models
    have no BN, so nothing is logged for them.

    Args:
      models: models whose BN layers are averaged together (e.g. both twin critics).
      prefix: ``Q`` for critics / Q-networks, ``pi`` for actors.
      after: op(s) the reads must follow, e.g. the train op, to report post-step values. Fetching
        such a tensor runs those ops, so only fetch it together with them.
    """
    layers = [layer for model in models for layer in bn_layers(model)]
    if not layers:
        return {}
    control = tf.nest.flatten(after) if after is not None else []
    out: dict[str, tf.Tensor] = {}
    per_stat: dict[str, list[tf.Tensor]] = {name: [] for name in _STAT_NAMES}
    with tf.name_scope(f"bn_diagnostics_{prefix}"), tf.control_dependencies(control):
        for layer in layers:
            for name in _STAT_NAMES:
                variable = getattr(layer, name, None)
                if variable is None:  # center=False / scale=False
                    continue
                norm = tf.norm(tf.identity(variable))
                out[f"bn/{prefix}/{layer.name}/{name}"] = norm
                per_stat[name].append(norm)
        for name, norms in per_stat.items():
            if norms:
                out[f"bn_{prefix}_{name}"] = tf.reduce_mean(tf.stack(norms))
    return out
