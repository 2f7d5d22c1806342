"""URL-list jobs: millions of image URLs fetched into verified webdataset shards.

The package takes plain values (paths, settings dataclasses) and never imports the daemon:
``readers`` streams the input list, ``fetch`` drives many transfers per process with
pycurl, ``images`` checks, hashes and resizes, ``dedupe`` keeps the job-wide indexes,
``shards`` writes one shard atomically and ``worker`` ties them together per shard.
"""
