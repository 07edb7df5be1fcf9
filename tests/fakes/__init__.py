"""Stand-ins for what is too slow or cannot run here, each a real program or server, not a mock:
`fake_train.py` (a training program of a fraction of a second per epoch that keeps the run-folder
contract of `python -m harness.train`, for the sweep and launcher tests) and `wandb_backend.py`
(W&B's service, for the real wandb client)."""
