"""Pictures of trained capsule networks: `python -m experiments.visualize --checkpoint runs/<run>/checkpoint.pt`.

From a run folder that capsule-train wrote (checkpoint.pt and config.json), PNG grids of test images:
input against reconstruction and the winning capsule's pose dimensions perturbed (models with a decoder,
Sabour et al. 2017, Figure 4), and the routing assignments of every routed layer on the children's grid (any model;
several checkpoints side by side). Modules: `runs` (a model rebuilt from its run folder, the test images),
`assignments` (the routed layers' assignments recorded by hooks, as maps), `decoding` (reconstructions and
perturbations), `figures` (matplotlib grids, written atomically), `main` (the command line).
"""
