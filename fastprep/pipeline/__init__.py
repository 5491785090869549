"""``fastprep prepare``: the root config, tasks, the executor, the driver's merge and the write stage."""
