"""What happens to a completed file: verify its digests, extract it safely, lay it out."""
