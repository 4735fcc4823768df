"""Pure, Ray-free numerics and I/O of filterdb: sources, kernels, metrics, densities, the store."""
