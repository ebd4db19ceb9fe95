"""How bnrl derives the seeds of the parts of a run from the run's seed."""


def derive_seed(parent: int, index: int, stride: int) -> int:
    """The seed of part ``index`` (1, 2, ...) of something seeded ``parent``.

    ``parent * stride + index``: distinct for every ``index < stride``, and the same run after
    run. Agents seed their networks with stride 1000 and networks their layers with stride 7919;
    both strides are kept as they are so that earlier results reproduce.
    """
    return parent * stride + index
