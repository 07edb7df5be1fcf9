"""cloudsweep: sweeps for cloud-structure segmentation that run anywhere and survive being killed.

Importing the package is cheap on purpose: TensorFlow, wandb and the sweep engine are imported
inside the functions that need them, so the CLI and the agents start fast.
"""

__version__ = "0.1.0"

# The challenge's four classes, in the fixed order used by every array's last axis.
CLASSES: tuple[str, ...] = ("Fish", "Flower", "Gravel", "Sugar")
