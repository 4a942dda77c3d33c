"""Applications on top of the library: the ``polypseg`` command, the web demo, the benchmark, dataset download."""
