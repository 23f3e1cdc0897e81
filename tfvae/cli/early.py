"""What the command line refuses before TensorFlow is imported, which takes 5-10 s on two cores.

A mistyped run directory, dataset or input file is the most common mistake, and it is refused at
once, in the words of the command's own checks, which run again after the import (so nothing here
is the only guard); so is a malformed --kl-schedule spec, whose arguments `tfvae.schedule_specs`
checks without TensorFlow. Of the disk, only what cannot change under the command is checked: a new
run's --out is checked by `tfvae train` itself, because the workers of a cluster start together and
the chief may create the folder meanwhile.
"""

from tfvae import schedule_specs
from tfvae.cli import flags, runs


def check(args):
    """Raises the error the command would raise later for args' run, --input, --dataset, --test-dataset,
    --resume or --kl-schedule."""
    run = getattr(args, "run", None)
    if run is not None:
        runs.check_trained(run)
    if getattr(args, "input", None) is not None:
        runs.check_input(args.input)
    if getattr(args, "dataset", None) is not None:
        runs.check_dataset(args.dataset)
    if getattr(args, "test_dataset", None) is not None:
        runs.check_dataset(args.test_dataset, "--test-dataset")
    if hasattr(args, "resume"):  # tfvae train, which checks --out first too
        runs.check_out(args.out)
        if args.resume and args.out is not None:
            runs.read_config(args.out)
    if getattr(args, "kl_schedule", None) is not None:
        with flags.named(flags.KL_SCHEDULE):
            schedule_specs.parse(args.kl_schedule)
