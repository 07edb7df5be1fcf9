"""`python -m harness.train [--config FILE] [--run_id ID] [--root DIR] [--sweep_id ID] [--key=value ...]`.

One training run (see harness.run.train and docs/training.md); W&B sweep commands call this.
"""

import sys

from harness.run.train import main

if __name__ == "__main__":
    sys.exit(main())
