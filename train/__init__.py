"""unetkit.train: `unet-train` (the training loop, evaluation, TensorBoard logging) and, in `unetkit.train.data`,
the data layer and `unet-data`. Needs the training extras: pip install 'unetkit[train]'."""
