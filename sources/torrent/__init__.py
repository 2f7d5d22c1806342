"""BitTorrent source through libtorrent (the only package that imports it)."""
