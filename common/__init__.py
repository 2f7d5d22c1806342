"""Shared leaf package of acquired: the error base, digests and formatters.

It imports nothing of ours, so ``acquired.daemon``, ``acquired.sources`` and
``acquired.unpack`` may all depend on it without cycles.
"""
