"""Running the GPU targets: the commands as processes, run records, the pod stop, resume, background runs."""
