"""A source whose test split is another source (`tfvae.sources.open(path, test=TEST)`)."""

from tfvae.sources import stream


class HeldOut(stream.Source):
    """Every example of `train` is a training example, every example of `test` a test example."""

    def __init__(self, train, test):
        if tuple(test.event_shape) != tuple(train.event_shape):
            raise ValueError(f"test: expected examples of shape {tuple(train.event_shape)} like {train.path}'s; "
                             f"{test.path} has {tuple(test.event_shape)}.")
        if (train.classes is None) != (test.classes is None):
            raise ValueError(f"test: {train.path} and {test.path} must both have labels or neither; "
                             f"{(train if train.classes is None else test).path} has none.")
        self.train, self.test = train, test
        self.kind, self.path, self.event_shape = train.kind, train.path, train.event_shape
        self.split_rule = f"all of {train.path} trains; {test.path} is the test split"
        self.classes = None if train.classes is None else max(train.classes, test.classes)
        train.classes = test.classes = self.classes  # one-hot labels of one width in both splits
        self.skipped = train.skipped + test.skipped

    def describe(self):
        return {**super().describe(), "test_source": self.test.path, "test_kind": self.test.kind}

    def size(self, split):
        return self.train.size("all") + self.test.size("all") if split == "all" else self._part(split).size("all")

    def names(self, split):
        return self._part(split).names("all")

    def dataset(self, split="train", *args, **kwargs):
        if split == "all":
            raise ValueError(f"split: read the training source {self.train.path} and the test source "
                             f"{self.test.path} apart; got 'all'.")
        return self._part(split).dataset("all", *args, **kwargs)

    def read(self, split="test", *args, **kwargs):
        return self._part(split).read("all", *args, **kwargs)

    def _part(self, split):
        return self.train if stream._split(split) == "train" else self.test
