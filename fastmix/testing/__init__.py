"""Dataset generators shared by tests, benchmarks and the demo: `synth` (lerobot's own writer, v3.0),
`v21` (fastmix's v2.1 writer), `large` (large many-file datasets, v3.0 or v2.1) and `fakes` (an in-memory
source and a fault-injecting frame reader for loader tests). Import the submodules directly; `synth` imports
lerobot only when writing."""
