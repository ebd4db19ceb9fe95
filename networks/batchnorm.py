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
  check_wiring(train_op, models)      every BN call a train op leaves stale, updates from the
                                      wrong call, or updates twice
  bn_layers(model), bn_diagnostics(models, prefix)   the seed-2 scalars as graph tensors

Vocabulary. A *call* of a BN layer is one application of it to a tensor; Keras gives every call
its own name scope (``model/bn``, ``model_1/bn``, ...) and its own update ops. A call normalizes
with *batch statistics* when it is built with ``training=True``, or with a ``training`` tensor
(``training=None`` in a graph follows ``keras.backend.learning_phase()``, a placeholder that can
be fed 1). A *frozen* layer (``trainable=False``) always runs in inference mode (Keras 2).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bnrl.networks.backend import keras, require_keras2, tf

UPDATE_OPS = tf.compat.v1.GraphKeys.UPDATE_OPS
_ASSIGN_TYPES = frozenset({"AssignSubVariableOp", "AssignVariableOp", "AssignAddVariableOp"})
_COND_TYPES = frozenset({"If", "StatelessIf"})
# Scopes Keras' and tf.compat.v1.layers' BN give their moving-average writes; other writes of the
# same variables (target-network copies, checkpoint restores) are not BN updates.
_UPDATE_SCOPES = ("AssignMovingAvg", "AssignNewValue")
_MOVING = ("moving_mean", "moving_variance")
_STAT_NAMES = ("gamma", "beta", "moving_mean", "moving_variance")
_LEARNING_PHASE = "keras_learning_phase"
_LEARNING_PHASE_NOTE = (
    "training=None follows keras.backend.learning_phase(), in a graph a placeholder that "
    "defaults to 0 (inference); set_learning_phase() sets it only for the graph that is the "
    "default at the time, so one made before `with tf.Graph().as_default()` does not carry "
    "into that graph"
)

# Models handed to collect_updates / training_call, per graph (weakly: neither is kept alive):
# minimize_with_updates leaves their frozen layers' weights out of its default var_list.
_MODELS_SEEN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# Update ops of batch_statistics_call calls, per graph: created by Keras, meant never to run.
_STATISTICS_ONLY: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


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


def _expand(seen: set, stack: list, stop) -> set:
    """Add to ``seen`` every op ``stack`` depends on (data and control inputs, transitively)."""
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


def ancestors(fetches, stop: Iterable[tf.Operation] = ()) -> set[tf.Operation]:
    """Every op a ``sess.run(fetches)`` executes (data and control inputs, transitively).

    Args:
      fetches: ops or tensors (any nesting).
      stop: ops whose inputs are not followed (they are still included).
    """
    return _expand(set(), [_as_op(f) for f in tf.nest.flatten(fetches)], set(stop))


def _within(op: tf.Operation, scope: str) -> set[tf.Operation]:
    """``op`` and the ops it depends on through data inputs inside name scope ``scope``."""
    seen: set[tf.Operation] = set()
    stack = [op]
    while stack:
        op = stack.pop()
        if op not in seen:
            seen.add(op)
            stack.extend(t.op for t in op.inputs if t.op.name.startswith(scope))
    return seen


def _downstream(tensors) -> set[tf.Operation]:
    """Every op that consumes ``tensors``, transitively."""
    seen: set[tf.Operation] = set()
    stack = [c for t in tensors for c in t.consumers()]
    while stack:
        op = stack.pop()
        if op not in seen:
            seen.add(op)
            stack.extend(c for t in op.outputs for c in t.consumers())
    return seen


# ------------------------------------------------------------------- what a BN update op writes
def _writer(op: tf.Operation) -> tf.Operation:
    """The op that writes: Keras lists a conditional update as an Identity of its cond."""
    if op.type == "Identity" and op.inputs and op.inputs[0].op.type in _COND_TYPES:
        return op.inputs[0].op
    return op


def _cond_written(op: tf.Operation) -> set[tf.Operation]:
    """The variable handles a cond's branches assign (a ``training`` tensor's update)."""
    written: set[tf.Operation] = set()
    for branch in ("then_branch", "else_branch"):
        # A v2 cond's branches are graph functions; the graph's function library is the only
        # place their ops can be read in graph mode.
        definition = op.graph._get_function(op.get_attr(branch).name).definition
        args = [arg.name for arg in definition.signature.input_arg]
        for node in definition.node_def:
            if node.op in _ASSIGN_TYPES and node.input[0] in args:
                # Branch argument i is the cond's input i + 1 (input 0 is the predicate).
                written.add(op.inputs[args.index(node.input[0]) + 1].op)
    return written


def _written(op: tf.Operation) -> set[tf.Operation]:
    """Variable handles ``op`` (an update as Keras or UPDATE_OPS list it) writes."""
    op = _writer(op)
    if op.type in _ASSIGN_TYPES:
        return {op.inputs[0].op}
    return _cond_written(op) if op.type in _COND_TYPES else set()


def _call_scope(op: tf.Operation) -> str:
    """The name scope of the layer call that created update ``op`` (unique per call)."""
    parts = op.name.split("/")
    for i, part in enumerate(parts):
        if part.startswith(_UPDATE_SCOPES):
            return "/".join(parts[:i])
    return op.name.rsplit("/", 1)[0]


def _bn_writes(handle: tf.Operation) -> list[tf.Operation]:
    """The BN moving-average updates of variable ``handle``, of every call, in creation order."""
    writes = []
    for op in handle.outputs[0].consumers():
        if op.type in _ASSIGN_TYPES:
            if op.inputs[0].op is handle and any(
                    part.startswith(_UPDATE_SCOPES) for part in op.name.split("/")):
                writes.append(op)
        elif op.type in _COND_TYPES and handle in _cond_written(op):
            writes.append(op)
    return sorted(writes, key=lambda op: op._id)


def _by_variable(updates: list[tf.Operation]) -> dict[tf.Operation, list[tf.Operation]]:
    grouped: dict[tf.Operation, list[tf.Operation]] = {}
    for op in updates:
        for handle in _written(op):
            grouped.setdefault(handle, []).append(op)
    return grouped


def _remember(model, graph: tf.Graph) -> None:
    seen = _MODELS_SEEN.setdefault(graph, [])
    if not any(ref() is model for ref in seen):
        seen.append(weakref.ref(model))


# ------------------------------------------------------------------------- collecting updates
def collect_updates(model: keras.layers.Layer, inputs, conditional: bool = False
                    ) -> list[tf.Operation]:
    """The moving-average update ops of ``model``'s training-mode call on exactly ``inputs``.

    ``model.updates`` also holds the ops of the build call, bound to Keras' own Input placeholder
    (running them fails with "You must feed a value for placeholder input_1"); Keras'
    ``get_updates_for(inputs)`` leaves those out but returns the updates of *every* call reachable
    from any of the inputs. When that is more than one call per BN variable, the ops reachable
    from all of the inputs are kept; if that still does not single out one call (two training-mode
    calls sharing the tensor that reaches a BN layer, or one BN layer shared by two branches),
    this raises rather than guess: build that call with ``training_call`` instead.

    Args:
      model: a tf-keras model or layer.
      inputs: the tensor(s) the training-mode call received (the same nesting as the call).
      conditional: accept the updates of a call with a ``training`` *tensor* (such as the
        learning phase that ``training=None`` follows in a graph). They apply only in the runs
        that feed that tensor True, and the call normalizes with moving statistics in the others.

    Returns:
      A flat list of ops; empty when the model has no BN layer to update (none, or all frozen).

    Raises:
      ValueError: nothing to collect although the model has trainable BN layers (not called on
        these inputs yet, or called in inference mode); a ``training`` tensor without
        ``conditional=True``; calls that cannot be told apart.
    """
    require_keras2(model)
    flat_inputs = tf.nest.flatten(inputs)
    _remember(model, flat_inputs[0].graph)
    candidates = _flat_ops(model.get_updates_for(flat_inputs))
    if not candidates:
        _explain_nothing_to_collect(model, flat_inputs)
        return []
    if not conditional:
        _require_static(model, candidates)
    by_variable = _by_variable(candidates)
    if all(len(ops) == 1 for ops in by_variable.values()):
        return candidates
    input_ops = {t.op for t in flat_inputs}
    # Data inputs only: shared=True orders a later call's update after an earlier call's.
    narrowed = [op for op in candidates if input_ops <= _within(op, "")]
    kept = _by_variable(narrowed)
    if set(kept) != set(by_variable) or any(len(ops) != 1 for ops in kept.values()):
        raise ValueError(_ambiguous_message(
            model, by_variable, "build that call with training_call(model, inputs, shared=True)"))
    return narrowed


def _ambiguous_message(model, by_variable, shared_fix: str) -> str:
    scopes = sorted({_call_scope(_writer(op)) for ops in by_variable.values() if len(ops) > 1
                     for op in ops})
    parents = {scope.rsplit("/", 1)[0] for scope in scopes}
    if len(parents) == 1 and len(scopes) > 1:  # e.g. siamese/bn and siamese/bn_1
        return (f"model '{model.name}' applies a BN layer to more than one tensor in one call "
                f"(calls {', '.join(scopes)}: a layer shared by two branches): {shared_fix}, "
                "which runs one update per call, in call order, as Keras fit does")
    return (f"model '{model.name}' was called in training mode more than once on tensors shared "
            f"with these inputs (calls {', '.join(scopes)}), so their updates cannot be told "
            "apart: make the other calls training=False, or build the call with "
            "training_call(model, inputs)")


def _training_flag(update: tf.Operation) -> tf.Tensor | None:
    """The ``training`` tensor an update depends on; None for a ``training=True`` call.

    Unfused BN wraps its whole update in a cond; fused BN runs a plain assign whose decay and
    batch moments come out of conds on the flag.
    """
    writer = _writer(update)
    if writer.type in _COND_TYPES:
        return writer.inputs[0]
    for op in _within(writer, _call_scope(writer) + "/"):
        if op.type in _COND_TYPES:
            return op.inputs[0]
    return None


def _require_static(model, updates: list[tf.Operation]) -> None:
    flags = [flag for flag in map(_training_flag, updates) if flag is not None]
    if not flags:
        return
    flag = flags[0]
    note = f" ({_LEARNING_PHASE_NOTE})" if flag.op.name.startswith(_LEARNING_PHASE) else ""
    raise ValueError(
        f"model '{model.name}' was called on these inputs with a tensor `training` flag "
        f"'{flag.name}'{note}, so its BN updates apply only in runs that feed it True: call the "
        "model with training=True (training_call(model, inputs) calls and collects), or, if you "
        "do feed that flag, collect_updates(model, inputs, conditional=True)")


def _explain_nothing_to_collect(model, flat_inputs) -> None:
    """No updates: fine without trainable BN layers, else raise saying what went wrong."""
    layers = [layer for layer in bn_layers(model) if layer.trainable]
    if not layers:
        return
    names = ", ".join(f"'{layer.name}'" for layer in layers)
    downstream = _downstream(flat_inputs)
    handles = [v.handle.op for layer in layers for v in (layer.moving_mean, layer.moving_variance)]
    # An inference call combines the moving statistics with (what it computed from) the inputs.
    reads = [t for h in handles for read in h.outputs[0].consumers() for t in read.outputs]
    if downstream & _downstream(reads):
        raise ValueError(
            f"model '{model.name}' was called on these inputs in inference mode (training=False, "
            f"or training=None with the learning phase at 0), so BN layers {names} have no "
            "updates to collect: call it with training=True (training_call(model, inputs) calls "
            "and collects in one step)")
    raise ValueError(
        f"model '{model.name}' has not been called on these inputs "
        f"({', '.join(t.name for t in flat_inputs)}), so BN layers {names} have no updates to "
        "collect yet: call model(inputs, training=True) first and collect with the same inputs, "
        "or use training_call(model, inputs), which calls and collects in one step")


def training_call(model: keras.layers.Layer, inputs, training=True, shared: bool = False,
                  **kwargs):
    """Call ``model(inputs, training=training)`` and return ``(outputs, update_ops)`` of that call.

    Exact by construction: the updates are the model's update ops created by this very call, so
    other training-mode calls on shared tensors can never leak in. Frozen BN layers
    (``trainable=False``) run in inference mode and have no updates (Keras 2 semantics).

    Args:
      model: a tf-keras model or layer.
      inputs: the call's inputs.
      training: True (default), False (inference: no updates), or a boolean tensor (updates that
        apply in the runs feeding it True). None is refused: in a graph it would follow the
        learning phase, a placeholder that defaults to inference.
      shared: allow a BN layer applied to more than one tensor inside this call (one layer shared
        by two branches). Each application then updates the moving statistics once, in call
        order, as Keras ``fit`` does: ``m <- EMA(EMA(m, stats of call 1), stats of call 2)``.
        Not supported for Batch Renorm layers.
      **kwargs: further call arguments.

    Raises:
      ValueError: ``training=None``; a shared BN layer without ``shared=True``; a training-mode
        call that created no update although the model has trainable BN layers.
    """
    require_keras2(model)
    if training is None:
        raise ValueError(
            f"training_call needs training=True, False or a boolean tensor, got None: "
            f"{_LEARNING_PHASE_NOTE}")
    graph = tf.compat.v1.get_default_graph()
    _remember(model, graph)
    n_before = len(graph.get_operations())
    outputs = model(inputs, training=training, **kwargs)
    created = graph.get_operations()[n_before:]
    if graph.building_function:
        # Keras maps updates to inputs through the tensors it saw; inside a cond branch or loop
        # body the inputs are captures it cannot trace back. The writes this call created are
        # its updates.
        updates = [op for op in created if op.type in _ASSIGN_TYPES
                   and any(part.startswith(_UPDATE_SCOPES) for part in op.name.split("/"))]
    else:
        created_set = set(created)
        updates = [op for op in _flat_ops(model.get_updates_for(tf.nest.flatten(inputs)))
                   if op in created_set]
    if not updates and (tf.is_tensor(training) or training):
        _explain_nothing_to_collect(model, tf.nest.flatten(inputs))
    repeated = {h: ops for h, ops in _by_variable(updates).items() if len(ops) > 1}
    if repeated:
        if not shared:
            raise ValueError(_ambiguous_message(model, repeated, "pass shared=True"))
        _chain_in_call_order(model, repeated)
    return outputs, updates


def batch_statistics_call(model: keras.layers.Layer, inputs, **kwargs):
    """Call ``model`` normalizing with the batch statistics of ``inputs``, updating nothing.

    For a network evaluated in training mode only for its normalization: a training-mode TD
    target or bootstrap, a critic inside the actor loss that should see the Q it is trained as
    (the BN-critic remedies). Keras still creates the call's update ops; they are recorded as
    never to run, so that ``check_wiring`` neither asks for them nor lets a train op run them.

    Returns:
      The call's outputs.
    """
    graph = tf.compat.v1.get_default_graph()
    if graph.building_function:
        # Inside a function every stateful op runs (automatic control dependencies): the call
        # must not create its statistics writes at all. Its ops are recorded so that
        # check_wiring does not ask for updates of the batch moments it computes.
        n_before = len(graph.get_operations())
        with _no_statistics_writes(model):
            outputs = model(inputs, training=True, **kwargs)
        _STATISTICS_ONLY.setdefault(graph, set()).update(graph.get_operations()[n_before:])
        return outputs
    outputs, updates = training_call(model, inputs, **kwargs)
    _STATISTICS_ONLY.setdefault(graph, set()).update(_writer(op) for op in updates)
    return outputs


@contextlib.contextmanager
def _no_statistics_writes(model):
    """Within the block, ``model``'s BN layers compute their statistics updates but write
    nothing: Keras' two assignment helpers (moving mean / variance / stddev, Batch Renorm's
    renorm_mean / renorm_stddev) return the variable's current value instead."""
    layers = bn_layers(model)
    def current(variable, *args):
        return tf.identity(variable)

    for layer in layers:
        # object.__setattr__: Keras' __setattr__ would track the functions as layer attributes.
        object.__setattr__(layer, "_assign_moving_average", current)
        object.__setattr__(layer, "_assign_new_value", current)
    try:
        yield
    finally:
        for layer in layers:
            object.__delattr__(layer, "_assign_moving_average")
            object.__delattr__(layer, "_assign_new_value")


def _chain_in_call_order(model, repeated: dict) -> None:
    """Order each shared variable's updates: call k+1 reads it after call k's write."""
    renorm = [layer.name for layer in bn_layers(model) if layer.renorm
              and {v.handle.op for v in (layer.moving_mean, layer.moving_variance)} & set(repeated)]
    if renorm:
        raise ValueError(
            f"shared=True does not support Batch Renorm layers ({', '.join(renorm)}): the renorm "
            "correction of a later call would read statistics its earlier call has not updated")
    for handle, ops in repeated.items():
        writers = [_writer(op) for op in ops]  # creation order = call order
        for before, after in zip(writers, writers[1:], strict=False):
            for read in _update_reads(after, handle):
                # Keras' update ops already exist: a control input is the only way to order
                # the read inside the later update after the earlier write.
                read._add_control_input(before)


def _update_reads(writer: tf.Operation, handle: tf.Operation) -> list[tf.Operation]:
    """The ops inside update ``writer`` that read ``handle`` before writing it."""
    if writer.type in _COND_TYPES:
        return [writer]  # reads and writes happen inside the cond's branch
    return [op for op in _within(writer, writer.name.rsplit("/", 1)[0] + "/")
            if op.type == "ReadVariableOp" and op.inputs[0].op is handle]


def collection_updates(graph: tf.Graph | None = None, scope: str | None = None):
    """The ``UPDATE_OPS`` collection as a flat list of ops (``tf.compat.v1.layers`` BN fills it).

    Keras BN layers never add to it: their updates come from ``collect_updates`` /
    ``training_call``. A model mixing both needs both lists in its train op.
    """
    graph = graph or tf.compat.v1.get_default_graph()
    return _flat_ops(graph.get_collection(UPDATE_OPS, scope))


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
      updates: from ``collect_updates`` / ``training_call`` / ``collection_updates``.
      var_list: variables to train. Default: the graph's trainable variables the loss depends on,
        without the weights of frozen layers (``trainable=False``) of every model passed to
        ``collect_updates`` or ``training_call`` in this graph. TensorFlow's own default keeps
        those: the trainable-variables collection is filled when a variable is created and
        never follows ``layer.trainable``.
    """
    if var_list is None:
        var_list = _keras_trainable_variables(loss.graph)
    return with_updates(optimizer.minimize(loss, var_list=var_list), updates, name=name)


def _keras_trainable_variables(graph: tf.Graph) -> list:
    frozen = set()
    for ref in _MODELS_SEEN.get(graph, ()):
        model = ref()
        if model is not None:
            frozen.update(w.ref() for w in model.non_trainable_weights)
    with graph.as_default():
        return [v for v in tf.compat.v1.trainable_variables() if v.ref() not in frozen]


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


# ------------------------------------------------------------------------------ wiring check
@dataclass
class _Layer:
    """A BN layer as the check sees it: its moving-statistic variables and what freezes it."""

    name: str
    moving: dict[str, tf.Operation]  # "moving_mean" / "moving_variance" -> variable handle
    weights: dict[str, tf.Operation]  # "gamma" / "beta" -> handle (frozen layers only)
    frozen: bool


def _keras_layer(layer) -> _Layer:
    weights = {name: getattr(layer, name).handle.op for name in ("gamma", "beta")
               if getattr(layer, name, None) is not None}
    return _Layer(layer.name, {name: getattr(layer, name).handle.op for name in _MOVING},
                  weights if not layer.trainable else {}, not layer.trainable)


def _collection_layers(graph: tf.Graph, known: set) -> list[_Layer]:
    """BN layers outside the models, found through ``UPDATE_OPS`` (``tf.compat.v1.layers``)."""
    found: dict[str, dict[str, tf.Operation]] = {}
    for op in _flat_ops(graph.get_collection(UPDATE_OPS)):
        for handle in _written(op):
            prefix, _, short = handle.name.rpartition("/")
            if handle not in known and short in _MOVING:
                found.setdefault(prefix, {})[short] = handle
    return [_Layer(prefix, moving, {}, False) for prefix, moving in found.items()]


def _batch_modes(forward: set, writes: set) -> dict[str, tf.Tensor | None]:
    """Call scope -> how the forward pass uses that call's batch statistics.

    ``None``: always (``training=True``: batch moments or a training-mode fused BN op).
    A tensor: the ``training`` flag of a cond choosing between batch and moving statistics.
    """
    modes: dict[str, tf.Tensor | None] = {}
    for op in forward:
        if op in writes:
            continue
        if op.type in _COND_TYPES:
            modes[op.name.rsplit("/", 1)[0]] = op.inputs[0]
        elif "/moments/" in op.name:
            modes.setdefault(op.name.rsplit("/moments/", 1)[0], None)
        elif op.type.startswith("FusedBatchNorm") and not op.type.startswith(
                "FusedBatchNormGrad") and op.get_attr("is_training"):
            modes.setdefault(op.name.rsplit("/", 1)[0], None)
    return modes


def check_wiring(train_op, models: Sequence, raise_error: bool = False) -> list[str]:
    """Report every BN call that ``train_op`` leaves stale, updates wrongly, or updates twice.

    Looks at every BN layer of ``models`` (Keras BN, fused or not, Batch Renorm) and at the
    ``tf.compat.v1.layers`` BN layers whose updates are in ``UPDATE_OPS``, and at each of their
    calls. A call normalizes with batch statistics in the train op when the computation behind
    ``train_op`` (its forward pass and gradients, not counting BN update ops) computes that call's
    batch moments, or its choice between batch and moving statistics by a ``training`` tensor
    (the learning phase of ``training=None``) that a run can feed. Reported, one line each:

    * a batch-statistics call whose moving mean / variance updates the train op does not run;
    * updates the train op runs that belong to another call than the one its loss uses: the
      build call on Keras' own ``Input`` placeholder, a call on a placeholder the loss does not
      feed, a call whose output the loss does not use;
    * a moving statistic written more than once per run, unless the writes are ordered one call
      after the other, which ``training_call(..., shared=True)`` builds (a shared layer);
    * a frozen layer (``trainable=False``) that the train op trains or normalizes with batch
      statistics.

    It cannot see BN layers of models not passed (other than ``UPDATE_OPS`` ones), updates run
    in a separate ``sess.run``, or which values a run will feed.

    Args:
      train_op: the op (or list of fetches) run once per gradient step.
      models: the Keras models whose BN layers to check.
      raise_error: raise ``WiringError`` with all problems instead of returning them.

    Returns:
      One human-readable line per problem; empty when the wiring is right.
    """
    fetches = [_as_op(f) for f in tf.nest.flatten(train_op)]
    graph = fetches[0].graph
    with graph.as_default():  # tf-keras reads layer attributes differently outside a graph
        layers, known = [], set()
        for layer in (layer for model in models for layer in bn_layers(model)):
            if layer.moving_mean.handle.op not in known:
                layers.append(_keras_layer(layer))
                known.update(layers[-1].moving.values())
        layers += _collection_layers(graph, known)
    if not layers:
        return []
    writes = [{short: _bn_writes(h) for short, h in layer.moving.items()} for layer in layers]
    all_writes = {op for per_layer in writes for ops in per_layer.values() for op in ops}
    forward = ancestors(fetches, stop=all_writes)
    # What the run executes: the forward pass plus the BN updates it reaches, with their inputs.
    executed = _expand(forward - all_writes, [op for op in all_writes if op in forward], set())
    modes = _batch_modes(forward, all_writes)
    quiet = _STATISTICS_ONLY.get(graph, set())
    problems = []
    for layer, layer_writes in zip(layers, writes, strict=True):
        problems += _layer_problems(layer, layer_writes, forward, executed, modes, quiet)
    for op in sorted(forward, key=lambda op: op._id):
        if op.type in _CALL_TYPES:
            problems += _body_problems(_function_graph(op), [(op, 0)], layers, {})
    if problems and raise_error:
        raise WiringError("; ".join(problems))
    return problems


def _layer_problems(layer: _Layer, writes: dict, forward: set, executed: set, modes: dict,
                    quiet: set):
    calls: dict[str, dict[str, list]] = {}  # call scope -> statistic -> its write ops
    for short, ops in writes.items():
        for op in ops:
            calls.setdefault(_call_scope(op), {}).setdefault(short, []).append(op)
    statistics_only = {scope for scope, per in calls.items()
                       if all(op in quiet for ops in per.values() for op in ops)}
    batch_calls = [scope for scope in calls if scope in modes]
    ran = {scope: {short for short, ops in per.items() if any(op in executed for op in ops)}
           for scope, per in calls.items()}
    if layer.frozen:
        return _frozen_problems(layer, calls, batch_calls, ran, executed)
    own_writes = {op for ops in writes.values() for op in ops}
    # The loss uses the layer through a batch-statistics call, or reads its moving statistics.
    used = batch_calls or any(op in forward and op not in own_writes
                              for h in layer.moving.values() for op in h.outputs[0].consumers())
    problems = []
    for scope in calls:
        for short in _MOVING:
            if scope in statistics_only:
                if short in ran[scope]:
                    problems.append(
                        f"BN layer '{layer.name}' call '{scope}' was made with "
                        f"batch_statistics_call (its statistics must not move) but this train op "
                        f"updates its {short}: leave that call's update ops out of the train op")
            elif scope in modes and short not in ran[scope]:
                problems.append(_stale_message(layer, scope, short, modes[scope]))
            elif scope not in modes and short in ran[scope] and used:
                problems.append(_foreign_message(layer, scope, short, batch_calls,
                                                 calls[scope][short], forward))
    for short in _MOVING:
        scopes = [scope for scope in calls if short in ran[scope]]
        if len(scopes) > 1 and not (set(scopes) <= set(batch_calls) and _in_order(
                [op for scope in scopes for op in calls[scope][short] if op in executed])):
            problems.append(
                f"BN layer '{layer.name}' has its {short} updated {len(scopes)} times per step "
                f"(calls {', '.join(scopes)}): collect the updates of one training-mode call "
                "only; for a layer shared on purpose build that call with training_call(model, "
                "inputs, shared=True), which runs one update per call in call order")
    return problems


def _stale_message(layer: _Layer, scope: str, short: str, flag) -> str:
    when, fix = "", ("add that call's updates to the train op (training_call(model, inputs), or "
                     "collect_updates(model, inputs) with the inputs of that call)")
    if flag is not None:
        note = f" ({_LEARNING_PHASE_NOTE})" if flag.op.name.startswith(_LEARNING_PHASE) else ""
        when = f" whenever '{flag.name}' is fed True"
        fix = (f"call the model with training=True{note}, or run that call's conditional "
               "updates (collect_updates(model, inputs, conditional=True))")
    return (f"BN layer '{layer.name}' call '{scope}' normalizes with batch statistics{when} but "
            f"its {short} is never updated by this train op: {fix}")


def _foreign_message(layer: _Layer, scope: str, short: str, batch_calls, ops, forward) -> str:
    loss_uses = (f"the loss uses call {', '.join(batch_calls)}" if batch_calls
                 else "the loss uses the layer in inference mode")
    unfed = sorted(op.name for op in ancestors(ops) - forward if op.type == "Placeholder")
    if unfed:
        why = (f"it depends on placeholder {', '.join(unfed)}, which the loss does not use (Keras' "
               "own Input when it is the model's build call: running it fails with 'You must "
               "feed a value for placeholder')")
    else:
        why = "the loss does not use that call's output"
    return (f"BN layer '{layer.name}' has its {short} updated by call '{scope}', but {loss_uses}: "
            f"{why}; collect the updates of the call the loss uses instead")


def _frozen_problems(layer: _Layer, calls, batch_calls, ran, executed) -> list[str]:
    problems = [
        f"BN layer '{layer.name}' is frozen (trainable=False) but this train op trains its "
        f"{name}: leave frozen layers' weights out of var_list (minimize_with_updates does for "
        "models passed to collect_updates or training_call)"
        for name, handle in layer.weights.items()
        if any(op in executed and (op.type in _ASSIGN_TYPES or op.type.startswith(
            ("ResourceApply", "ResourceSparseApply"))) for op in handle.outputs[0].consumers())]
    for scope in calls:
        if scope in batch_calls or ran[scope]:
            problems.append(
                f"BN layer '{layer.name}' is frozen (trainable=False) but its call '{scope}' was "
                "built in training mode (before the layer was frozen): freeze the layer before "
                "calling the model, so that it normalizes with its moving statistics")
    return problems


# ------------------------------------------------------------- wiring inside graph functions
_CALL_TYPES = frozenset({"PartitionedCall", "StatefulPartitionedCall"})


def _library_graph(op: tf.Operation, name: str):
    """The ``FuncGraph`` of function ``name`` that ``op`` runs, from the function library of
    ``op``'s graph or of a graph enclosing it."""
    graph = op.graph
    while graph is not None:
        function = graph._get_function(name)
        if function is not None:
            return function.graph
        graph = getattr(graph, "outer_graph", None)
    raise LookupError(f"function {name} of op {op.name} is in no enclosing graph's library")


def _function_graph(call: tf.Operation):
    """The ``FuncGraph`` a function-call op runs."""
    return _library_graph(call, call.get_attr("f").name)


def _nested_bodies(op: tf.Operation) -> list:
    """(graph, offset) of the bodies a control-flow op runs: each branch of a cond or
    ``switch_case``, a while loop's body. Body input ``i`` is the op's input ``i + offset``."""
    if op.type in _CALL_TYPES:
        return [(_function_graph(op), 0)]
    if op.type in _COND_TYPES:
        return [(op._true_graph, 1), (op._false_graph, 1)]
    if op.type in ("Case", "StatelessCase"):
        return [(_library_graph(op, f.name), 1) for f in op.get_attr("branches")]
    if op.type in ("While", "StatelessWhile"):
        return [(op._body_graph, 0)]
    return []


def _outer_handle(tensor: tf.Tensor, chain: list) -> tf.Operation:
    """The outer graph's op behind a resource tensor of the innermost body of ``chain`` (a list
    of (op running a body, input offset), outermost first), following body inputs outwards."""
    for op, offset in reversed(chain):
        while tensor.op.type == "Identity":
            tensor = tensor.op.inputs[0]
        positions = {id(t): i for i, t in enumerate(tensor.graph.inputs)}
        if id(tensor) not in positions:
            return tensor.op
        tensor = op.inputs[positions[id(tensor)] + offset]
    while tensor.op.type == "Identity":
        tensor = tensor.op.inputs[0]
    return tensor.op


def _body_problems(graph, chain: list, layers: list, inherited: dict) -> list[str]:
    """Wiring problems of one function body run once (a function, a branch, one iteration of a
    while loop) and, recursively, of the bodies it runs.

    Inside a function every BN update op runs (automatic control dependencies), whether or not
    the step groups it; so what can go wrong is a moving statistic written more than once per
    run (two training-mode calls, counting writes of the enclosing bodies: ``inherited``), or a
    training-mode call that writes nothing (a ``training`` tensor whose branch never writes).
    """
    handles = {h: (layer, short) for layer in layers for short, h in layer.moving.items()}
    own: dict[tf.Operation, list] = {}
    for op in graph.get_operations():
        if op.type in _ASSIGN_TYPES:
            handle = _outer_handle(op.inputs[0], chain)
            if handle in handles:
                own.setdefault(handle, []).append(op)
    counts = {h: inherited.get(h, 0) + len(own.get(h, ())) for h in set(inherited) | set(own)}
    problems = []
    for handle in own:
        if counts[handle] > 1:
            layer, short = handles[handle]
            problems.append(
                f"BN layer '{layer.name}' has its {short} updated {counts[handle]} times per step "
                f"(in function body '{graph.name}'): collect the updates of one training-mode "
                "call only; every other call of the model must be training=False or "
                "batch_statistics_call")
    names = {layer.name for layer in layers}
    quiet = _STATISTICS_ONLY.get(graph, set())
    written = _written_scopes(graph)
    for scope in sorted({op.name.rsplit("/moments/", 1)[0] for op in graph.get_operations()
                         if "/moments/" in op.name and op not in quiet
                         and not op.name.startswith("gradients")}):
        if scope.rsplit("/", 1)[-1] in names and scope not in written:
            problems.append(
                f"BN layer '{scope.rsplit('/', 1)[-1]}' call '{scope}' normalizes with batch "
                f"statistics but its moving statistics are never updated by this train op (in "
                f"function body '{graph.name}'): call the model with training=True")
    for op in graph.get_operations():
        for body, offset in _nested_bodies(op):
            problems += _body_problems(body, chain + [(op, offset)], layers, counts)
    return problems


def _written_scopes(graph) -> set[str]:
    """Call scopes of the BN statistics writes of a body and of the bodies it runs."""
    scopes = {_call_scope(op) for op in graph.get_operations() if op.type in _ASSIGN_TYPES}
    for op in graph.get_operations():
        for body, _ in _nested_bodies(op):
            scopes |= _written_scopes(body)
    return scopes


def _in_order(writers: list[tf.Operation]) -> bool:
    """Whether each write depends on the one created before it (one chain, in call order)."""
    writers = sorted(writers, key=lambda op: op._id)
    return all(before in ancestors(after) for before, after in zip(writers, writers[1:],
                                                                  strict=False))


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
