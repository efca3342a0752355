"""gdexp's Hydra plugins: the tracked sweeper and the search path that holds `sweeps/`."""
