"""A Keras model's inference-mode forward pass in numpy, for acting on one observation.

One observation through a [256, 256] actor is a few microseconds of arithmetic, while a
``sess.run`` pays a fixed ~100 us (feeds, executor, fetches): more than SBX's whole jitted
``predict``. Evaluation and deployment act many times between weight changes, so an agent copies
its actor's weights out once per change and runs this instead (benchmarks/README.md has the
latency before and after). BN layers use their moving statistics, exactly as ``training=False``.
Convolutions are not implemented: a convolutional Q-network raises ``Unsupported`` and the agent
acts through its graph (one ``sess.run`` costs little beside a convolution's arithmetic).
"""

from __future__ import annotations

import numpy as np
from tf_keras.src.engine.functional import get_network_config

from bnrl.networks.backend import keras, require_keras2
from bnrl.networks.builders import RunningObsNorm

_ACTIVATIONS = {
    "linear": lambda x: x,
    "relu": lambda x: np.maximum(x, 0.0),
    "tanh": np.tanh,
}


class Unsupported(ValueError):
    """The model has a layer this numpy forward pass does not implement."""


def _activation(layer) -> callable:
    name = keras.activations.serialize(layer.activation)
    if name not in _ACTIVATIONS:
        raise Unsupported(f"layer '{layer.name}': activation '{name}'")
    return _ACTIVATIONS[name]


def _dense(layer, w):
    act, use_bias = _activation(layer), layer.use_bias
    return lambda x: act(x @ w[0] + w[1] if use_bias else x @ w[0])


def _batch_norm(layer, w):
    # Keras' inference mode, Batch Renorm included: (x - moving_mean) / sqrt(moving_var + eps)
    # * gamma + beta, folded into one scale and shift per feature.
    values = {id(v): value for v, value in zip(layer.weights, w, strict=True)}
    scale = 1.0 / np.sqrt(values[id(layer.moving_variance)] + layer.epsilon)
    if layer.scale:
        scale = scale * values[id(layer.gamma)]
    shift = -values[id(layer.moving_mean)] * scale
    if layer.center:
        shift = shift + values[id(layer.beta)]
    scale, shift = scale.astype(np.float32), shift.astype(np.float32)
    return lambda x: x * scale + shift


def _layer_norm(layer, w):
    if not (layer.scale and layer.center) or list(layer.axis) not in ([-1], [1]):
        raise Unsupported(f"layer '{layer.name}': LayerNormalization other than over the "
                          "features with scale and center")
    (gamma, beta), eps = w, layer.epsilon

    def run(x):
        mean = x.mean(-1, keepdims=True)
        var = np.square(x - mean).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + eps) * gamma + beta

    return run


def _rescaling(layer):
    # Keras: cast to float32, then inputs * scale + offset (uint8 observations: Observation).
    scale, offset = np.float32(layer.scale), np.float32(layer.offset)
    return lambda x: x.astype(np.float32) * scale + offset


def _running_obs_norm(layer, w):
    # SimBa's RSNorm with its stored statistics, in float64 as the graph computes it.
    mean, var, _ = (np.asarray(v, np.float64) for v in w)
    std = np.sqrt(var + layer.EPSILON)
    return lambda x: ((x.astype(np.float64) - mean) / std).astype(np.float32)


def _compile(layer, w):
    if isinstance(layer, RunningObsNorm):
        return _running_obs_norm(layer, w)
    if isinstance(layer, keras.layers.Add):
        return lambda *xs: sum(xs[1:], xs[0])
    if isinstance(layer, keras.layers.Rescaling):
        return _rescaling(layer)
    if isinstance(layer, keras.layers.Flatten):
        return lambda x: x.reshape(len(x), -1)
    if isinstance(layer, keras.layers.Dense):
        return _dense(layer, w)
    if isinstance(layer, keras.layers.BatchNormalization):
        return _batch_norm(layer, w)
    if isinstance(layer, keras.layers.LayerNormalization):
        return _layer_norm(layer, w)
    if isinstance(layer, keras.layers.Activation):
        return _activation(layer)
    if isinstance(layer, keras.layers.Concatenate):
        return lambda *xs: np.concatenate(xs, layer.axis)
    raise Unsupported(f"layer '{layer.name}' ({type(layer).__name__})")


class NumpyForward:
    """``model(x, training=False)`` up to the output of layer ``output``, in numpy.

    Only the layers that output depends on are run (so a SAC actor's deterministic mean skips
    its log-std head). Call ``load`` with the values of ``variables`` whenever they change.

    Args:
      model: a functional Keras model of one input (Rescaling, Flatten, Dense,
        BatchNormalization, Batch Renorm, LayerNormalization, Activation, Concatenate, Add and
        SimBa's RunningObsNorm layers).
      output: the name of the layer whose output is wanted; the model's output by default.

    Raises:
      Unsupported: the path to ``output`` has another layer or activation.
    """

    def __init__(self, model, output: str | None = None):
        require_keras2(model)
        # The node graph of get_config, without serializing the layers (Batch Renorm's clipping
        # may hold tensors, which get_config cannot write).
        config = get_network_config(model, serialize_layer_fn=lambda layer: {})
        if len(config["input_layers"]) != 1:
            raise Unsupported(f"model '{model.name}' has {len(config['input_layers'])} inputs")
        if output is None:
            (output, _, _), *more = config["output_layers"]
            if more:
                raise Unsupported(f"model '{model.name}' has {len(more) + 1} outputs")
        inbound = {c["name"]: [n[0] for n in c["inbound_nodes"][0]] if c["inbound_nodes"]
                   else [] for c in config["layers"]}
        if output not in inbound:
            raise Unsupported(f"model '{model.name}' has no layer '{output}'")
        needed, stack = set(), [output]
        while stack:
            name = stack.pop()
            if name not in needed:
                needed.add(name)
                stack += inbound[name]
        # model.layers is in topological order for a functional model.
        self._layers = [layer for layer in model.layers if layer.name in needed
                        and not isinstance(layer, keras.layers.InputLayer)]
        self._inputs = {layer.name: inbound[layer.name] for layer in self._layers}
        for layer in self._layers:  # refuse now, not at the first action
            _compile(layer, [np.zeros(v.shape, np.float32) for v in layer.weights])
        self._input, self._output = config["input_layers"][0][0], output
        self.variables = [v for layer in self._layers for v in layer.weights]
        self._steps = None

    def load(self, values) -> None:
        """Set the weights: numpy values of ``variables``, in that order."""
        values, steps = list(values), []
        for layer in self._layers:
            n = len(layer.weights)
            w, values = values[:n], values[n:]
            steps.append((layer.name, self._inputs[layer.name], _compile(layer, w)))
        self._steps = steps

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self._steps is None:
            raise RuntimeError("NumpyForward called before load()")
        out = {self._input: x}
        for name, inputs, fn in self._steps:
            out[name] = fn(*(out[i] for i in inputs))
        return out[self._output]
