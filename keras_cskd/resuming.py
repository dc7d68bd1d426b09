"""What a run does to resume besides restoring its checkpoint
(`keras_cskd.checkpointing`): split the epochs left into `fit` calls, finish
an epoch whose steps all ran, and trim the CSV log to the epochs it holds.

Example:

```python
for begin, end, skip in segments(resumed.epoch, resumed.step, 30):
    trainer.fit(batches(begin, end, skip), epochs=end, initial_epoch=begin)
```
"""

import keras

from keras_cskd import files


def segments(first_epoch, first_step, epochs):
    """The `(begin, end, skip_steps)` of each `fit` call left: the rest of an
    interrupted epoch on its own, then the epochs after it."""
    ranges = [(first_epoch, first_epoch + 1, first_step)] if first_step else []
    ranges.append((first_epoch + (1 if first_step else 0), epochs, 0))
    return [(begin, end, skip) for begin, end, skip in ranges if begin < end]


def finish_epoch(trainer, epoch, logs, fit_callbacks, validation):
    """What Keras's `fit` does after an epoch's last step, for an epoch whose
    steps all ran before its checkpoint: the epoch's logs (saved with the
    checkpoint), validation, and the callbacks' end of the epoch, once."""
    callback_list = keras.callbacks.CallbackList(fit_callbacks, model=trainer)
    callback_list.on_train_begin()
    callback_list.on_epoch_begin(epoch)
    logs = dict(logs)
    if validation:
        results = trainer.evaluate(
            validation, callbacks=callback_list, return_dict=True, verbose=0
        )
        logs.update({f"val_{name}": value for name, value in results.items()})
    callback_list.on_epoch_end(epoch, logs)
    callback_list.on_train_end(logs)


def keep_logged_epochs(path, history):
    """Keeps the CSV log's header and the rows of the epochs the checkpoint
    holds: a row logged after it, before a kill, is logged again."""
    done = len(next(iter(history.values()), []))
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    if not done:
        files.remove_tree(path)
    elif len(lines) > done + 1:
        files.write_text(path, "".join(lines[: done + 1]))
