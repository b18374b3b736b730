"""The shell: Kafka, files, clocks, signals and the `encore` command line."""
