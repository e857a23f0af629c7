"""Reports read from run directories: the run report and the task-affinity views behind it."""
