"""Networks: tf-keras builders with a normalization hook, and the BN update machinery.

Importing this package makes sure Keras 2 (tf-keras) is the Keras in use (see ``backend``).
"""

from bnrl.networks.backend import (
    KerasVersionError,
    keras,
    new_graph_session,
    session_callable,
    tf,
)
from bnrl.networks.batchnorm import (
    WiringError,
    batch_statistics_call,
    bn_diagnostics,
    bn_layers,
    check_wiring,
    collect_updates,
    collection_updates,
    minimize_with_updates,
    training_call,
    with_updates,
)
from bnrl.networks.builders import (
    CROSSQ_RENORM_CLIPPING,
    ENCODERS,
    NETWORKS,
    NORM_KINDS,
    SIMBA_NORMS,
    Norm,
    Observation,
    RunningObsNorm,
    Simba,
    critic,
    deterministic_actor,
    gaussian_actor,
    mlp,
    pick_encoder,
    q_network,
    simba_body,
    squashed_gaussian,
)

__all__ = [
    "CROSSQ_RENORM_CLIPPING", "ENCODERS", "NETWORKS", "NORM_KINDS", "KerasVersionError",
    "Norm", "Observation", "RunningObsNorm", "SIMBA_NORMS", "Simba", "WiringError",
    "batch_statistics_call",
    "bn_diagnostics", "bn_layers", "check_wiring", "collect_updates", "collection_updates",
    "critic", "deterministic_actor", "gaussian_actor", "keras", "minimize_with_updates", "mlp",
    "new_graph_session", "pick_encoder", "q_network", "session_callable", "simba_body",
    "squashed_gaussian", "tf",
    "training_call", "with_updates",
]
