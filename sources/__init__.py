"""How bytes arrive: HTTP mirrors and BitTorrent swarms, and the choice between them.

Nothing here imports acquired.daemon: callers pass plain values and receive events.
"""
