"""The costs of one-writer run folders and exact resume: `python -m benchmarks.resume_costs`.

Prints the lease's cost at start (acquire + renew thread + release), per epoch (its check) and per
renewal, and, with the real model and dataset (tiny config, generated data), the time to skip an
already-trained batch on resume against the time to train it. Numbers in docs/resuming.md.
"""
import statistics
import tempfile
import time
from pathlib import Path

from harness.run import lease

root = Path(tempfile.mkdtemp())
# Lease at start: acquire + start renewing + release, 200 times.
samples = []
for index in range(200):
    started = time.perf_counter()
    held = lease.Lease.acquire(root / f"run{index}").start_renewing()
    held.release()
    samples.append(time.perf_counter() - started)
print(f"lease acquire+release: median {statistics.median(samples)*1e3:.2f} ms, max {max(samples)*1e3:.2f} ms")
held = lease.Lease.acquire(root / "r")
checks = []
for _ in range(1000):
    started = time.perf_counter(); held.check(); checks.append(time.perf_counter() - started)
renews = []
for _ in range(200):
    started = time.perf_counter(); held.renew(); renews.append(time.perf_counter() - started)
print(f"lease check (per epoch end and per mid-epoch save): median {statistics.median(checks)*1e6:.0f} us")
print(f"lease renew (every ttl/3 = 20 s, in a thread): median {statistics.median(renews)*1e3:.2f} ms")
held.release()

# Skip vs retrain, per batch, with the real model and dataset (tiny config).
from harness import config as config_module
from harness.data import cache, dataset, synth
from harness.run import callbacks, losses, optim
import keras

data = synth.synthesize(root / "data", images=48, size=(96, 144), seed=0)
cache_dir = cache.prepare(data, (64, 96), workers=1, progress=False)
config = config_module.build_config(overrides={"data_dir": str(data), "cache_dir": str(cache_dir), "image_size": "64x96",
    "batch_size": 4, "filters": 4, "depth": 3, "workers": 1, "augment": "flips", "val_fraction": 0.2, "epochs": 1})
sets = dataset.make_datasets(config)
from harness.model import build_model
model = build_model(config)
model.compile(optimizer=optim.make_optimizer(config), loss=losses.get_loss(config.loss), metrics=losses.metric_objects(config.threshold))
batches = len(sets.train)
k = batches - 3
times = {}
class Timer(keras.callbacks.Callback):
    def on_train_batch_begin(self, batch, logs=None): self.t = time.perf_counter()
    def on_train_batch_end(self, batch, logs=None): times[batch] = time.perf_counter() - self.t
model.fit(sets.train, epochs=1, verbose=0, callbacks=[Timer()], shuffle=False)  # warm up (tracing)
trained = [times[b] for b in range(1, batches)]
sets.train.set_epoch(1)
callbacks.skip_first_batches(model, sets.train, 1, k)
times.clear()
model.fit(sets.train, epochs=2, initial_epoch=1, verbose=0, callbacks=[Timer()], shuffle=False)
skipped = [times[b] for b in range(k)]
print(f"{batches} batches of 4 at 64x96: train a batch median {statistics.median(trained)*1e3:.1f} ms; "
      f"skip a batch median {statistics.median(skipped)*1e3:.2f} ms ({statistics.median(trained)/statistics.median(skipped):.0f}x less); "
      f"skipping k={k}: {sum(skipped)*1e3:.0f} ms vs retraining them ~{statistics.median(trained)*k*1e3:.0f} ms")
