"""Where batches of runs execute: `local` in the driver's process or in N worker processes, `ray` as
Ray tasks, `slurm` as submitit job arrays. All of them go through the same driver loop
(`runner.driver.drive`): same claims, retries and store.
"""
