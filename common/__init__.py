"""The ground floor every other part of bnrl stands on: one-line errors, atomic files, seeds.

Nothing here imports TensorFlow or another bnrl package, so that ``networks``, ``envs``,
``agents``, ``training`` and ``compare`` can all use it without a circle.
"""
