"""Running a benchmark grid, one stage per module: grid → batch → run.

`grid` checks the config, registers the runs and picks where they execute; `driver` claims runs,
hands them out in batches, retries and records; `backends` are where batches execute (this process,
worker processes, Ray, Slurm); `worker` runs a batch in whichever process got it; `run` is one run
top to bottom; `progress` is what a running grid shows. This file imports nothing, so any stage
imports another without a cycle.
"""
