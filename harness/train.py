"""`python -m harness.train [--config FILE] [--run-id ID] [--root DIR] [--sweep-id ID] [--restart] [--key=value ...]`.

One training run (see harness.run.main, harness.run.train and docs/training.md); W&B sweep commands call this.
"""

import sys

from harness.run.main import main

if __name__ == "__main__":
    sys.exit(main())
