"""KL schedule specs, NAME:ARG=VALUE,..., and the schedules' arguments, read and checked without
TensorFlow: the command line refuses a malformed `--kl-schedule` before it imports TensorFlow.

Each class here holds one schedule's arguments; the schedule of `tfvae.schedules` with the same
name subclasses it and adds the math, so its arguments are checked here and only here.
"""

import inspect

from tfvae import arguments


class Linear:
    """The arguments of `tfvae.schedules.Linear`."""

    def __init__(self, steps, max_beta=1.0):
        self.steps = arguments.positive_int(steps, "steps", arguments.INT64_MAX)
        self.max_beta = arguments.finite_float(max_beta, "max_beta")

    def get_config(self):
        return {"steps": self.steps, "max_beta": self.max_beta}


class Cyclical:
    """The arguments of `tfvae.schedules.Cyclical`."""

    def __init__(self, period, ratio=0.5, max_beta=1.0):
        self.period = arguments.positive_int(period, "period", arguments.INT64_MAX)
        self.ratio = arguments.finite_float(ratio, "ratio")
        if self.ratio > 1:
            raise ValueError(f"ratio: expected a number in (0, 1]; got {ratio!r}.")
        self.max_beta = arguments.finite_float(max_beta, "max_beta")

    def get_config(self):
        return {"period": self.period, "ratio": self.ratio, "max_beta": self.max_beta}


class FreeBits:
    """The arguments of `tfvae.schedules.FreeBits`."""

    def __init__(self, nats):
        self.nats = arguments.finite_float(nats, "nats")

    def get_config(self):
        return {"nats": self.nats}


class Capacity:
    """The arguments of `tfvae.schedules.Capacity`."""

    def __init__(self, max_capacity, steps, gamma=1000.0):
        self.max_capacity = arguments.finite_float(max_capacity, "max_capacity", inclusive=True)
        self.steps = arguments.positive_int(steps, "steps", arguments.INT64_MAX)
        self.gamma = arguments.finite_float(gamma, "gamma")

    def get_config(self):
        return {"max_capacity": self.max_capacity, "steps": self.steps, "gamma": self.gamma}


# The arguments by the names of the specs; `tfvae.schedules.SCHEDULES` has the schedules by the same names.
ARGUMENTS = {"linear": Linear, "cyclical": Cyclical, "free_bits": FreeBits, "capacity": Capacity}


def parse(text, classes=ARGUMENTS):
    """`classes[NAME](**arguments)` for a spec string NAME or NAME:ARG=VALUE,..., or a ValueError that
    names kl_schedule.

    Args:
        text: the spec, e.g. "cyclical:period=1000,ratio=0.5".
        classes: {name: class}, by default the arguments here (a check that needs no TensorFlow);
            `tfvae.schedules` passes its schedules.
    """
    names = ", ".join(classes)
    name, _, specified = text.partition(":")
    name = name.strip()
    if name not in classes:
        raise ValueError(f"kl_schedule: expected NAME or NAME:ARG=VALUE,... with NAME one of {names}; got {text!r}.")
    cls = classes[name]
    parameters = inspect.signature(cls).parameters
    kwargs = {}
    for argument in filter(None, (a.strip() for a in specified.split(","))):
        key, equals, value = (part.strip() for part in argument.partition("="))
        if not equals or key not in parameters:
            raise ValueError(f"kl_schedule: {name} takes {', '.join(parameters)} as ARG=VALUE; got {argument!r}.")
        if key in kwargs:
            raise ValueError(f"kl_schedule: {key} is given twice in {text!r}; give each argument once.")
        kwargs[key] = _number(value, key)
    missing = [key for key, p in parameters.items() if p.default is inspect.Parameter.empty and key not in kwargs]
    if missing:
        example = ",".join(f"{key}=..." for key in missing)
        raise ValueError(f"kl_schedule: {name} needs {', '.join(missing)} ({name}:{example}); got {text!r}.")
    try:
        return cls(**kwargs)
    except ValueError as error:
        raise ValueError(f"kl_schedule: {text}: {error}") from None


def _number(text, key):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    raise ValueError(f"kl_schedule: {key}: expected a number; got {text!r}.")
