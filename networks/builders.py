"""Q-network, critic and actor builders: tf-keras functional models on one MLP body.

Every network goes through ``mlp`` and its ``Norm`` hook (SB3's pattern), so BN, Batch Renorm and
LayerNorm work the same way at every place they can go: on the state input and after each hidden
Dense. Layers are named so that diagnostics read well: ``q0_dense1``, ``q0_bn1``, ``pi_bn_in``.

Image observations (``Observation``: uint8 frames, boolean grids) enter the Q-network as they are
stored and are turned into float32 by its first layer; a convolutional encoder (``conv_encoder``,
chosen from the observation's shape by ``pick_encoder``) puts the same ``Norm`` after each
convolution and after its dense layer: BN on the 4-D conv activations runs Keras' fused kernel.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from bnrl.common.seeding import derive_seed
from bnrl.networks.backend import keras, tf

NORM_KINDS = ("none", "batch", "batch_renorm", "layer")

# CrossQ (Bhatt et al. 2024) clips Batch Renorm's corrections like this.
CROSSQ_RENORM_CLIPPING = {"rmax": 3.0, "rmin": 1.0 / 3.0, "dmax": 5.0}


@dataclass(frozen=True)
class Norm:
    """Which normalization a network uses and where.

    Momentum follows the Keras convention ``moving = moving * momentum + batch * (1 - momentum)``;
    PyTorch's ``momentum=0.01`` is Keras' 0.99 (PyTorch 0.1 is Keras 0.9).
    """

    kind: str = "none"
    """One of ``none``, ``batch``, ``batch_renorm`` (Keras ``renorm=True``), ``layer``."""
    momentum: float = 0.99
    """Keras-convention EMA momentum of BN moving statistics (Keras default 0.99)."""
    epsilon: float = 1e-3
    """Added to the variance before the square root (Keras default 1e-3)."""
    input_norm: bool = False
    """Also normalize the state input (DDPG paper, CrossQ)."""
    position: str = "pre_activation"
    """``pre_activation``: Dense -> Norm -> ReLU (Ioffe & Szegedy, DDPG); ``post_activation``:
    Dense -> ReLU -> Norm (CrossQ's critic)."""
    renorm_clipping: dict = field(default_factory=lambda: dict(CROSSQ_RENORM_CLIPPING))
    """Batch Renorm's r/d clipping; CrossQ's rmax 3, rmin 1/3, dmax 5 by default."""

    def __post_init__(self):
        if self.kind not in NORM_KINDS:
            raise ValueError(
                f"unknown normalization '{self.kind}': use one of {', '.join(NORM_KINDS)}")
        if self.position not in ("pre_activation", "post_activation"):
            raise ValueError(
                f"unknown norm position '{self.position}': use pre_activation or post_activation"
            )
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"norm momentum must be in [0, 1), got {self.momentum}")

    @property
    def is_batch(self) -> bool:
        return self.kind in ("batch", "batch_renorm")

    def layer(self, name: str) -> keras.layers.Layer | None:
        """A new normalization layer, or None for ``none``."""
        if self.kind == "none":
            return None
        if self.kind == "layer":
            return keras.layers.LayerNormalization(epsilon=self.epsilon, name=name)
        renorm = self.kind == "batch_renorm"
        return keras.layers.BatchNormalization(
            momentum=self.momentum,
            epsilon=self.epsilon,
            renorm=renorm,
            renorm_clipping=dict(self.renorm_clipping) if renorm else None,
            renorm_momentum=self.momentum,
            name=name,
        )

    @property
    def tag(self) -> str:
        """Short layer-name part: ``bn`` for both BN kinds, ``ln`` for LayerNorm."""
        return "ln" if self.kind == "layer" else "bn"


class Seeds:
    """Distinct initializer seeds drawn from one base seed; None leaves initializers unseeded.

    tf-keras initializers ignore ``tf.compat.v1.set_random_seed``; without explicit seeds two
    agents built with the same seed would start from different weights.
    """

    def __init__(self, seed: int | None):
        self.seed, self.count = seed, 0

    def kernel(self, init: str = "glorot_uniform"):
        """A kernel initializer: ``glorot_uniform`` (Keras' default, every MLP), ``he_normal``
        or ``orthogonal`` (gain 1; SimBa's residual blocks and embedding)."""
        kinds = {"glorot_uniform": keras.initializers.GlorotUniform,
                 "he_normal": keras.initializers.HeNormal,
                 "orthogonal": keras.initializers.Orthogonal}
        if self.seed is None:
            return init if init == "glorot_uniform" else kinds[init]()
        self.count += 1
        return kinds[init](seed=derive_seed(self.seed, self.count, 7919))


def _normalize(x, norm: Norm, prefix: str, suffix: str, training):
    layer = norm.layer(f"{prefix}_{norm.tag}{suffix}")
    if layer is None:
        return x
    if isinstance(layer, keras.layers.BatchNormalization):
        # training=None means "learning phase", which is inference in graph mode; the training
        # flag is a model input so that each call states its mode explicitly.
        return layer(x, training=training)
    return layer(x)


def _bias(norm: Norm, normalized: bool = True) -> bool:
    """Whether a Dense or Conv2D layer gets a bias: not right before BN. The batch-mean
    subtraction cancels it (Ioffe & Szegedy 2015), so its gradient is float noise, which Adam
    turns into steps of +-lr whose sign flips with the summation order (XLA against the plain
    graph: 180% apart after one update)."""
    return not (normalized and norm.is_batch and norm.position == "pre_activation")


def _normalized_layer(x, layer, norm: Norm | None, prefix: str, suffix: str, act_name: str,
                      activation: str, training):
    """``layer`` -> activation, with ``norm`` before or after the activation as
    ``norm.position`` says (None: no normalization here); the norm layers are named by
    ``_normalize(prefix, suffix)``."""
    x = layer(x)
    if norm is not None and norm.position == "pre_activation":
        x = _normalize(x, norm, prefix, suffix, training)
    x = keras.layers.Activation(activation, name=act_name)(x)
    if norm is not None and norm.position == "post_activation":
        x = _normalize(x, norm, prefix, suffix, training)
    return x


def mlp(
    x,
    hidden: Sequence[int],
    norm: Norm,
    prefix: str,
    training=None,
    activation: str = "relu",
    extra_input=None,
    extra_at: int = 0,
    norm_layers: int | None = None,
    seeds: Seeds | None = None,
):
    """The shared MLP body: [input norm] -> (Dense -> Norm -> act) x len(hidden).

    A Dense directly followed by BN or Batch Renorm has no bias (BN's beta takes its place).

    Args:
      x: input tensor.
      hidden: widths of the hidden layers.
      norm: normalization settings.
      prefix: layer-name prefix (``q0``, ``pi``).
      training: the BN mode for this call: a Python bool (or None while building a model whose
        later calls pass the flag); tensor flags make BN updates conditional and unattributable.
      activation: hidden activation.
      extra_input: a tensor concatenated in before hidden layer ``extra_at`` (the critic's action).
      extra_at: index of the hidden layer that first sees ``extra_input``.
      norm_layers: normalize only the first this-many hidden layers (DDPG: those before the
        action); None means all.
      seeds: initializer seeds (``Seeds``); None leaves the Dense layers unseeded.
    """
    seeds = seeds or Seeds(None)
    if norm.input_norm:
        x = _normalize(x, norm, prefix, "_in", training)
    for i, units in enumerate(hidden):
        if extra_input is not None and i == extra_at:
            x = keras.layers.Concatenate(name=f"{prefix}_join")([x, extra_input])
        normalized = norm_layers is None or i < norm_layers
        dense = keras.layers.Dense(units, use_bias=_bias(norm, normalized),
                                   kernel_initializer=seeds.kernel(), name=f"{prefix}_dense{i}")
        x = _normalized_layer(x, dense, norm if normalized else None, prefix, str(i),
                              f"{prefix}_act{i}", activation, training)
    if extra_input is not None and extra_at >= len(hidden):
        x = keras.layers.Concatenate(name=f"{prefix}_join")([x, extra_input])
    return x


NETWORKS = ("mlp", "simba")
"""The bodies a critic, actor or Q-network can have: ``mlp`` (``mlp``: Dense -> Norm -> act) or
``simba`` (``simba_body``: Lee et al. 2024's residual pre-norm blocks, after ``RunningObsNorm``)."""

SIMBA_EXPANSION = 4
"""SimBa's inverted bottleneck: each block's inner Dense has 4 x its width (Lee et al. 2024: "the
hidden dimension is expanded to 4 * hidden_dim"; the authors' ``ResidualBlock``, SBX's
``SimbaResidualBlock(scale_factor=4)``)."""

SIMBA_NORMS = ("layer", "batch", "batch_renorm")
"""The norms a SimBa body can have in its blocks and before its head: ``layer`` (the paper's),
``batch`` or ``batch_renorm`` in its place (SBX's ``SimbaCrossQPolicy``)."""


class RunningObsNorm(keras.layers.Layer):
    """SimBa's running statistics normalization (RSNorm, Lee et al. 2024):
    ``(x - mean) / sqrt(var + 1e-8)`` with the mean and variance of every observation the agent
    has acted on while training (``update``), never learned by gradient.

    The statistics are three non-trainable float64 variables (``mean``, ``var`` ``[dim]`` and
    ``count``), saved with every checkpoint and frozen into an export like any variable the
    policy reads. Before the first update (count 0) they are 0 and 1: the identity. ``update``
    merges a batch of rows with Chan et al.'s parallel formula, the one of the authors'
    ``RunningMeanStd`` (gymnasium's): ``delta = m_b - m``, ``n' = n + n_b``,
    ``m' = m + delta n_b / n'``, ``v' = (v n + v_b n_b + delta^2 n n_b / n') / n'``, with ``v_b``
    the batch's biased variance, so after any sequence of batches ``mean`` and ``var`` are
    numpy's ``mean`` and ``var`` of all the rows fed (count starts at 0, not the authors' 1e-4
    prior of mean 0 and variance 1).

    One layer is shared by every network of an agent (critic, target critic, actor), as the
    authors normalize each observation once before any network sees it: the online and the
    target critic read the same statistics.
    """

    EPSILON = 1e-8
    """Added to the variance before the square root (the authors' ``ObservationNormalizer``)."""

    def build(self, input_shape):
        dim = int(input_shape[-1])
        self.mean = self.add_weight("mean", (dim,), tf.float64, "zeros", trainable=False)
        self.var = self.add_weight("var", (dim,), tf.float64, "ones", trainable=False)
        self.count = self.add_weight("count", (), tf.float64, "zeros", trainable=False)
        super().build(input_shape)

    def call(self, x):
        x = tf.cast(x, tf.float64)
        return tf.cast((x - self.mean) / tf.sqrt(self.var + self.EPSILON), tf.float32)

    def update(self, x) -> tf.Operation:
        """The op that merges the rows of ``x`` (``[rows, ...]``, flattened per row) into the
        statistics."""
        x = tf.cast(tf.reshape(x, [tf.shape(x)[0], -1]), tf.float64)
        mean, var, count = self.mean.read_value(), self.var.read_value(), self.count.read_value()
        n = tf.cast(tf.shape(x)[0], tf.float64)
        batch_mean = tf.reduce_mean(x, axis=0)
        batch_var = tf.reduce_mean(tf.square(x - batch_mean), axis=0)
        delta = batch_mean - mean
        total = count + n
        new_mean = mean + delta * n / total
        new_var = (var * count + batch_var * n + tf.square(delta) * count * n / total) / total
        return tf.group(self.mean.assign(new_mean, read_value=False),
                        self.var.assign(new_var, read_value=False),
                        self.count.assign(total, read_value=False), name="rsnorm_update")


@dataclass(frozen=True)
class Simba:
    """A SimBa body (Lee et al. 2024): its width, its number of residual blocks, and the
    ``RunningObsNorm`` shared by the agent's networks (None: observations are not normalized,
    e.g. images, which their ``Observation.scale`` already maps to [0, 1])."""

    width: int = 512
    blocks: int = 2
    obs_norm: RunningObsNorm | None = None

    def __post_init__(self):
        if self.width < 1 or self.blocks < 1:
            raise ValueError(f"a SimBa body needs width >= 1 and blocks >= 1, got {self.width} "
                             f"and {self.blocks}")


def _check_simba_norm(norm: Norm) -> None:
    if norm.kind not in SIMBA_NORMS:
        raise ValueError(f"a SimBa body normalizes inside its blocks: its norm must be one of "
                         f"{', '.join(SIMBA_NORMS)}, not {norm.kind}")
    if norm.position != "pre_activation":
        raise ValueError("a SimBa body normalizes before each block (pre-norm): its norm "
                         "position must be pre_activation, not post_activation")


def simba_body(x, arch: Simba, norm: Norm, prefix: str, training=None, extra_input=None,
               seeds: Seeds | None = None):
    """SimBa's body (Lee et al. 2024; the authors' ``SACEncoder``, SBX's
    ``SimbaContinuousCritic``): [input norm] -> [concat ``extra_input``] -> Dense(width) ->
    ``blocks`` x (Norm -> Dense(4 width) -> ReLU -> Dense(width) -> + skip) -> Norm.

    ``norm.kind`` is the norm of the blocks and of the end: ``layer`` as in the paper, ``batch``
    or ``batch_renorm`` in its place (SBX's CrossQ SimBa). Layers writing to the residual stream
    (the embedding and each block's last Dense) have no bias with BN: every reader of the stream
    is a BN layer, whose mean subtraction cancels it (``_bias``). Initializers are the authors':
    orthogonal (gain 1) for the embedding, He normal in the blocks.

    Layer names: ``q0_embed``, ``q0_block0_ln``, ``q0_block0_dense0``, ``q0_block0_act``,
    ``q0_block0_dense1``, ``q0_block0_add``, ..., ``q0_ln_out`` (``bn`` for BN kinds).
    """
    _check_simba_norm(norm)
    seeds = seeds or Seeds(None)
    stream_bias = not norm.is_batch
    if norm.input_norm:
        x = _normalize(x, norm, prefix, "_in", training)
    if extra_input is not None:
        x = keras.layers.Concatenate(name=f"{prefix}_join")([x, extra_input])
    x = keras.layers.Dense(arch.width, use_bias=stream_bias,
                           kernel_initializer=seeds.kernel("orthogonal"),
                           name=f"{prefix}_embed")(x)
    for i in range(arch.blocks):
        block = f"{prefix}_block{i}"
        h = _normalize(x, norm, block, "", training)
        h = keras.layers.Dense(SIMBA_EXPANSION * arch.width,
                               kernel_initializer=seeds.kernel("he_normal"),
                               name=f"{block}_dense0")(h)
        h = keras.layers.Activation("relu", name=f"{block}_act")(h)
        h = keras.layers.Dense(arch.width, use_bias=stream_bias,
                               kernel_initializer=seeds.kernel("he_normal"),
                               name=f"{block}_dense1")(h)
        x = keras.layers.Add(name=f"{block}_add")([x, h])
    return _normalize(x, norm, prefix, "_out", training)


def _observation_input(x, arch: Simba | None):
    """The state as a network's body takes it: through the shared ``RunningObsNorm`` for a
    SimBa body that has one, as it is otherwise."""
    if arch is None or arch.obs_norm is None:
        return x
    return arch.obs_norm(x)


ENCODERS = ("auto", "mlp", "nature", "minatar")
"""The Q-network encoders: ``auto`` picks one from the observation's shape (``pick_encoder``)."""

# (filters, kernel, stride) of each convolution, then the width of the dense layer after them.
CONV_ENCODERS = {
    # Mnih et al. 2015 (Nature), "Methods: model architecture"; CleanRL's dqn_atari.py and SB3's
    # NatureCNN: 84x84x4 -> 20x20x32 -> 9x9x64 -> 7x7x64 -> 512.
    "nature": (((32, 8, 4), (64, 4, 2), (64, 3, 1)), 512),
    # Young & Tian 2019 (MinAtar), section 4: one 16-filter 3x3 stride-1 convolution and 128
    # units: 10x10xC -> 8x8x16 -> 128.
    "minatar": (((16, 3, 1),), 128),
}

NATURE_MIN_SIZE = 36
"""The Nature CNN's three valid convolutions need at least 36x36 pixels; smaller grids (MinAtar's
10x10) get the MinAtar encoder."""


@dataclass(frozen=True)
class Observation:
    """One observation as the networks take it: its shape, the dtype it is stored and fed in, and
    the scale that turns it into float32 inside the graph.

    Attributes:
      shape: the shape of one observation: ``(obs_dim,)``, or ``(height, width, channels)``.
      dtype: ``float32`` (vectors, fed as they are) or ``uint8`` (frames and boolean grids: a
        quarter of the replay memory of float32, converted in the graph).
      scale: what a uint8 value is multiplied by: 1/255 for 0-255 frames (Atari, as CleanRL's
        ``x / 255.0`` and SB3's ``preprocess_obs``), 1 for booleans (MinAtar's 0/1 channels).
      frames: k > 1 when the channels are the last k frames of a frame stack (Atari's 4, Mnih
        et al. 2015), so that the replay stores each frame once (``agents.replay``); 1 when they
        are not (vectors, MinAtar's object channels). Set from the env
        (``envs.frame_stack``), never guessed from the shape; the replay buffer checks that the
        last axis has ``frames`` entries.
    """

    shape: tuple[int, ...]
    dtype: str = "float32"
    scale: float = 1.0
    frames: int = 1

    @classmethod
    def from_space(cls, space, frames: int = 1) -> Observation:
        """The observation of a gymnasium ``Box``: bool and uint8 spaces are stored as uint8,
        anything else as float32; ``frames`` as the env says (``envs.frame_stack``)."""
        shape = tuple(int(d) for d in space.shape)
        dtype = np.dtype(space.dtype)
        if dtype == np.bool_:
            return cls(shape, "uint8", 1.0, frames)
        if dtype == np.uint8:
            return cls(shape, "uint8", 1.0 / 255.0, frames)
        return cls(shape, "float32", 1.0, frames)

    @property
    def dim(self) -> int:
        """Numbers in one observation."""
        return int(np.prod(self.shape))

    @property
    def is_image(self) -> bool:
        """Whether it has a height, a width and channels."""
        return len(self.shape) == 3


def as_observation(obs) -> Observation:
    """``Observation`` of an int (a float32 vector of that size) or an ``Observation``."""
    if isinstance(obs, Observation):
        return obs
    return Observation((int(obs),))


def pick_encoder(obs: Observation, setting: str = "auto") -> str:
    """The encoder of ``setting`` for ``obs``; ``auto``: ``mlp`` for vectors, ``nature`` for
    images of at least 36x36 pixels (Atari's 84x84 stacks), ``minatar`` for smaller grids.

    Raises:
      ValueError: an unknown setting, or a convolutional encoder for a vector observation.
    """
    if setting not in ENCODERS:
        raise ValueError(f"unknown encoder '{setting}': use one of {', '.join(ENCODERS)}")
    if setting == "auto":
        if not obs.is_image:
            return "mlp"
        return "nature" if min(obs.shape[:2]) >= NATURE_MIN_SIZE else "minatar"
    if setting != "mlp" and not obs.is_image:
        raise ValueError(f"encoder '{setting}' is convolutional but the observation has shape "
                         f"{obs.shape}: it needs (height, width, channels); use mlp or auto")
    if setting == "nature" and min(obs.shape[:2]) < NATURE_MIN_SIZE:
        raise ValueError(f"encoder 'nature' needs at least {NATURE_MIN_SIZE}x{NATURE_MIN_SIZE} "
                         f"pixels, the observation has shape {obs.shape}: use minatar or auto")
    return setting


def _as_float(x, obs: Observation, prefix: str):
    """A uint8 observation as float32 times its scale, inside the model (so that a target
    network, an export and every call get the same conversion); float32 ones as they are."""
    if obs.dtype == "float32":
        return x
    return keras.layers.Rescaling(obs.scale, name=f"{prefix}_obs_scale")(x)


def conv_encoder(x, kind: str, norm: Norm, prefix: str, training=None, seeds: Seeds | None = None,
                 arch: Simba | None = None):
    """Convolutions of ``CONV_ENCODERS[kind]`` -> flatten -> dense, with ``norm`` after each
    convolution and after the dense layer, placed as ``mlp`` places it (``norm.position``; a
    convolution right before BN has no bias); ``norm.input_norm`` normalizes the input image.
    With ``arch`` (SimBa), the flattened features go through ``simba_body`` instead of the dense
    layer.

    Layer names: ``q_conv0``, ``q_bn_conv0``, ``q_conv_act0``, ..., ``q_flatten``, then the dense
    layer as ``mlp`` names it (``q_dense0``, ``q_bn0``, ``q_act0``).
    """
    seeds = seeds or Seeds(None)
    convs, units = CONV_ENCODERS[kind]
    if norm.input_norm:
        x = _normalize(x, norm, prefix, "_in", training)
    for i, (filters, kernel, stride) in enumerate(convs):
        conv = keras.layers.Conv2D(filters, kernel, strides=stride, padding="valid",
                                   use_bias=_bias(norm), kernel_initializer=seeds.kernel(),
                                   name=f"{prefix}_conv{i}")
        x = _normalized_layer(x, conv, norm, prefix, f"_conv{i}", f"{prefix}_conv_act{i}", "relu",
                              training)
    x = keras.layers.Flatten(name=f"{prefix}_flatten")(x)
    if arch is not None:
        return simba_body(x, arch, dataclasses.replace(norm, input_norm=False), prefix, training,
                          seeds=seeds)
    return mlp(x, (units,), dataclasses.replace(norm, input_norm=False), prefix, training,
               seeds=seeds)


def _model(inputs, body, name: str) -> keras.Model:
    """Build ``body`` on Keras Inputs with ``training=None``.

    Functional models forward the ``training`` flag of each later call to layers built with
    ``training=None``, so ``model(x, training=True)`` reaches every BN layer (pinned by tests).
    """
    outputs = body(inputs, None)
    return keras.Model(inputs, outputs, name=name)


def q_network(
    obs: int | Observation,
    n_actions: int,
    hidden: Sequence[int] = (64, 64),
    norm: Norm = Norm(),
    dueling: bool = False,
    name: str = "q_network",
    seed: int | None = None,
    encoder: str = "auto",
    arch: Simba | None = None,
) -> keras.Model:
    """obs -> one Q-value per discrete action (DQN), optionally with a dueling head.

    Args:
      obs: observation size (a float32 vector), or the ``Observation`` (images: uint8, scaled
        to float32 by the model's first layer).
      n_actions: number of discrete actions.
      hidden: hidden widths of the ``mlp`` encoder (a convolutional encoder has its own dense
        layer, ``CONV_ENCODERS``).
      norm: normalization settings.
      dueling: Q = V + A - mean(A) (Wang et al. 2016).
      name: model name.
      seed: initializer seed (None: unseeded).
      encoder: one of ``ENCODERS`` (``pick_encoder``); ``mlp`` flattens an image first.
      arch: a SimBa body (``Simba``) in place of the ``mlp`` encoder or of a convolutional
        encoder's dense layer; None: ``hidden``. Its ``RunningObsNorm`` normalizes float32
        observations only (uint8 ones are scaled by ``Observation.scale``).
    """
    obs = as_observation(obs)
    kind = pick_encoder(obs, encoder)
    inputs = keras.Input(obs.shape, dtype=obs.dtype, name="obs")
    seeds = Seeds(seed)

    if arch is not None and obs.dtype != "float32":
        arch = dataclasses.replace(arch, obs_norm=None)

    def body(x, training):
        x = _as_float(x, obs, "q")
        if kind != "mlp":
            h = conv_encoder(x, kind, norm, "q", training, seeds=seeds, arch=arch)
        else:
            if len(obs.shape) > 1:
                x = keras.layers.Flatten(name="q_flatten")(x)
            x = _observation_input(x, arch)
            h = (mlp(x, hidden, norm, "q", training, seeds=seeds) if arch is None
                 else simba_body(x, arch, norm, "q", training, seeds=seeds))
        if not dueling:
            return keras.layers.Dense(n_actions, kernel_initializer=seeds.kernel(),
                                      name="q_out")(h)
        value = keras.layers.Dense(1, kernel_initializer=seeds.kernel(), name="q_value")(h)
        adv = keras.layers.Dense(n_actions, kernel_initializer=seeds.kernel(),
                                 name="q_advantage")(h)
        return keras.layers.Lambda(
            lambda va: va[0] + va[1] - tf.reduce_mean(va[1], axis=1, keepdims=True),
            name="q_dueling",
        )([value, adv])

    return _model(inputs, body, name)


def critic(
    obs_dim: int,
    act_dim: int,
    hidden: Sequence[int] = (256, 256),
    norm: Norm = Norm(),
    action_at: int = 0,
    n_critics: int = 1,
    norm_after_action: bool = True,
    name: str = "critic",
    seed: int | None = None,
    arch: Simba | None = None,
) -> keras.Model:
    """(obs, action) -> Q-values of shape ``[batch, n_critics]`` (twin critics for TD3/SAC).

    Args:
      obs_dim: observation size.
      act_dim: action size.
      hidden: hidden widths of each critic.
      norm: normalization settings (``input_norm`` puts it on the state input).
      action_at: hidden layer index where the action joins: 0 = with the state at the input,
        1 = at the second hidden layer (DDPG paper).
      n_critics: independent Q-heads, each its own MLP.
      norm_after_action: False normalizes only the layers before the action joins (DDPG paper).
      name: model name.
      seed: initializer seed (None: unseeded).
      arch: a SimBa body (``Simba``) for each head instead of ``hidden``: the state, through
        the shared ``RunningObsNorm``, joins the action at the input (the authors' and SBX's
        critics), so ``action_at`` must be 0 and ``norm_after_action`` true.
    """
    if arch is not None and (action_at != 0 or not norm_after_action):
        raise ValueError("a SimBa critic takes the action with the state at its input and "
                         "normalizes every block: action_at must be 0 and norm_after_action true")
    if not 0 <= action_at <= len(hidden):
        raise ValueError(f"action_at must be in [0, {len(hidden)}], got {action_at}")
    obs = keras.Input((obs_dim,), name="obs")
    act = keras.Input((act_dim,), name="action")
    norm_layers = None if norm_after_action else action_at
    seeds = Seeds(seed)

    def body(inputs, training):
        s, a = inputs
        s = _observation_input(s, arch)
        heads = []
        for k in range(n_critics):
            if arch is not None:
                h = simba_body(s, arch, norm, f"q{k}", training, extra_input=a, seeds=seeds)
            else:
                h = mlp(s, hidden, norm, f"q{k}", training, extra_input=a, extra_at=action_at,
                        norm_layers=norm_layers, seeds=seeds)
            heads.append(keras.layers.Dense(1, kernel_initializer=seeds.kernel(),
                                            name=f"q{k}_out")(h))
        return heads[0] if n_critics == 1 else keras.layers.Concatenate(name="q_all")(heads)

    return _model([obs, act], body, name)


def _actor_body(x, hidden, norm: Norm, training, seeds: Seeds, arch: Simba | None):
    """An actor's body: ``mlp`` of ``hidden``, or ``simba_body`` after the shared
    ``RunningObsNorm``."""
    if arch is None:
        return mlp(x, hidden, norm, "pi", training, seeds=seeds)
    return simba_body(_observation_input(x, arch), arch, norm, "pi", training, seeds=seeds)


def deterministic_actor(
    obs_dim: int, act_dim: int, hidden: Sequence[int] = (256, 256), norm: Norm = Norm(),
    name: str = "actor", seed: int | None = None, arch: Simba | None = None,
) -> keras.Model:
    """obs -> action in [-1, 1] (tanh), for DDPG and TD3; ``arch``: a SimBa body instead of
    ``hidden``."""
    obs = keras.Input((obs_dim,), name="obs")
    seeds = Seeds(seed)

    def body(x, training):
        h = _actor_body(x, hidden, norm, training, seeds, arch)
        return keras.layers.Dense(act_dim, activation="tanh", kernel_initializer=seeds.kernel(),
                                  name="pi_out")(h)

    return _model(obs, body, name)


def gaussian_actor(
    obs_dim: int, act_dim: int, hidden: Sequence[int] = (256, 256), norm: Norm = Norm(),
    name: str = "actor", seed: int | None = None, arch: Simba | None = None,
) -> keras.Model:
    """obs -> ``[mean, log_std]`` of a Gaussian to be tanh-squashed (SAC, CrossQ); ``arch``: a
    SimBa body instead of ``hidden``.

    ``log_std`` is bounded smoothly to [-5, 2] (CleanRL/SpinningUp) so that early, large
    pre-activations cannot make the policy degenerate.
    """
    obs = keras.Input((obs_dim,), name="obs")
    seeds = Seeds(seed)

    def body(x, training):
        h = _actor_body(x, hidden, norm, training, seeds, arch)
        mean = keras.layers.Dense(act_dim, kernel_initializer=seeds.kernel(), name="pi_mean")(h)
        raw = keras.layers.Dense(act_dim, activation="tanh", kernel_initializer=seeds.kernel(),
                                 name="pi_log_std")(h)
        log_std = keras.layers.Lambda(lambda t: LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN)
                                      * (t + 1.0), name="pi_log_std_scale")(raw)
        return keras.layers.Concatenate(name="pi_dist")([mean, log_std])

    return _model(obs, body, name)


LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


def squashed_gaussian(dist: tf.Tensor, noise: tf.Tensor | None = None):
    """Sample ``tanh(mean + std * noise)`` and its log-probability (SAC, Haarnoja et al. 2018).

    Args:
      dist: ``[mean, log_std]`` from ``gaussian_actor``.
      noise: standard normal noise of the mean's shape; drawn in-graph when None.

    Returns:
      ``(action, log_prob, deterministic_action)``, log_prob of shape ``[batch]``.
    """
    mean, log_std = tf.split(dist, 2, axis=-1)
    std = tf.exp(log_std)
    if noise is None:
        noise = tf.random.normal(tf.shape(mean))
    pre = mean + std * noise
    action = tf.tanh(pre)
    gauss = -0.5 * tf.square(noise) - log_std - 0.5 * tf.math.log(2.0 * 3.141592653589793)
    # log(1 - tanh(x)^2) written stably as 2 * (log 2 - x - softplus(-2x)).
    correction = 2.0 * (tf.math.log(2.0) - pre - tf.nn.softplus(-2.0 * pre))
    log_prob = tf.reduce_sum(gauss - correction, axis=-1)
    return action, log_prob, tf.tanh(mean)
