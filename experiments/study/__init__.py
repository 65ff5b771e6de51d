"""The routing study (`capsule-study`): every routing, uniform routing and a plain CNN trained on the same
architecture and budget, then compared on clean accuracy, affine and rotation generalisation, adversarial
robustness (FGSM, BIM), novel smallNORB viewpoints and cost. See `experiments.study.run` for the command."""
