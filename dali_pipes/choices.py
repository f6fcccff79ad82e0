"""The names the data layer accepts, in a module that imports nothing: a command line lists them in its --help
without loading torch or DALI."""

DATASETS = ("cifar10", "cifar100", "folder", "shards", "synthetic")
BACKENDS = ("dali", "torchvision")
SPLITS = ("train", "val")
