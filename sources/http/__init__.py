"""HTTP(S) source: ranged, segmented, resumable downloads across ranked mirrors."""
