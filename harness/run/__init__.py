"""A run: workload, plan, the cell procedure, the runner, validity."""
