"""unetkit.train.data: data set layouts, reading and checking pairs, augmentation, synthetic data, Kaggle."""
