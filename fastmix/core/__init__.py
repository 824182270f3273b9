"""The sampling core, no I/O: `seeds` (every random number as a pure function of seed, epoch, position),
`alias` (Vose alias tables), `index_map` (global ↔ (dataset, local)), `mixture` (weighting modes, shares)
and `sampler` (`MixtureSampler`). Import the submodules directly."""
