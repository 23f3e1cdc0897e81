"""The library's errors in the command line's words: flags, not parameter names.

Needs no TensorFlow, so `tfvae.cli.early` words the errors it raises before the import exactly as
the commands word the same errors after it.
"""

import contextlib

KL_SCHEDULE = {"kl_schedule": "--kl-schedule"}  # the library's argument name -> the flag

# Advice in the library's messages, in the command line's words.
_API_ADVICE = {
    "pass overwrite=True": "pass --overwrite",
    "use likelihood='gaussian'": "train with --likelihood gaussian",
    "needs tflite=True": "needs the TFLite model (drop --no-tflite)",
    "Pass skip_bad_files=True to skip them": "tfvae train --skip-bad-files skips them",
}


@contextlib.contextmanager
def named(names):
    """Re-raises the library's ValueError, TypeError and OSError naming the flags the user typed.

    Args:
        names: {parameter name: what to call it instead}; a message that starts with "parameter:"
            starts with the flag instead, and advice such as "pass overwrite=True" names the flag.
    """
    try:
        yield
    except (ValueError, TypeError, OSError) as error:
        message = str(error)
        name, colon, rest = message.partition(":")
        if colon and name in names:
            message = names[name] + colon + rest
        for advice, flag in _API_ADVICE.items():
            message = message.replace(advice, flag)
        if message == str(error):
            raise
        raise type(error)(message) from None


@contextlib.contextmanager
def about(flag):
    """Re-raises a ValueError or OSError from reading the data `flag` names (a CSV table's bad cell, say) with
    the flag in front, so the one-line error names what the user typed; a message naming a flag already stays."""
    try:
        yield
    except (ValueError, OSError) as error:
        message = str(error)
        if message.startswith("-"):
            raise
        raise type(error)(f"{flag}: {message}") from None
