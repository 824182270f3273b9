"""The main job, `fastmix demo`: generate the embedded mixture, compute its norm stats, train a small policy.

Importing `fastmix.demo.configs` registers the demo configs with the registry (`fastmix.cli` does)."""
