"""`tfvae score`: how unlike the run's data each input is: a score, its conformal p-value, and a flag."""

import csv
import io

from tfvae import plots
from tfvae.cli import commands, flags, runs

NAMES = {"num_samples": "--num-samples", "method": "--method", "false_positive_rate": "--false-positive-rate"}


def score(args):
    from tfvae import ood
    from tfvae.ood import conformal

    output = runs.output_path(args.output, (".csv",))
    plot = None if args.plot is None else runs.output_path(args.plot, (".png",), "--plot")
    model = runs.load_model(args.run)
    # Without --calibrate the run's config.json must name its dataset, whose test split calibrates.
    config = runs.read_config(args.run) if args.calibrate is None else commands.config_if_any(args.run)
    options = {} if args.num_samples is None else {"num_samples": args.num_samples}
    with flags.named(NAMES):
        detector = ood.OutlierDetector(model, args.method, batch_size=args.batch_size, **options)
    calibration, calibration_condition, source = _calibration(args, config, model)
    with flags.named(NAMES):
        conformal.check_resolves(len(calibration), args.false_positive_rate)
    x, labels, names = runs.read_input(args.input, model.event_shape)
    # A run trained with --condition labels scores each input under its label.
    condition = commands.labels_as_conditions(model, labels, f"--input {args.input}")
    with flags.named({"x": f"--input {args.input}"}):
        x = _as_trained(x, model, config)
    with flags.named({"x": f"--calibrate {source}"}):
        detector.calibrate(calibration, calibration_condition)
    with flags.named({"x": f"--input {args.input}"}):
        scores = detector.score(x, condition)
    p_values = conformal.p_values(detector.calibration_scores, scores)
    flagged = p_values <= args.false_positive_rate
    _write_csv(output, scores, p_values, flagged, names)
    if plot is not None:
        plots.score_histogram(detector.calibration_scores, scores, plot, f"{detector.method.name} score",
                              (f"calibration: {source}", f"input: {args.input}"))
    print(f"Wrote the {detector.method.name} score, p-value and flag of {len(x)} inputs to {output}: "
          f"{int(flagged.sum())} flagged ({flagged.mean():.1%}) at a false-positive rate of {args.false_positive_rate:g}, "
          f"calibrated on {len(calibration)} images of {source}." + (f" Histogram: {plot}." if plot else ""))
    return 0


def _calibration(args, config, model):
    """(the calibration images as the model is scored on them, their conditions or None, what they are):
    --calibrate, or the run's test split."""
    if args.calibrate is not None:
        x, labels, _ = runs.read_input(args.calibrate, model.event_shape)
        condition = commands.labels_as_conditions(model, labels, f"--calibrate {args.calibrate}")
        with flags.named({"x": f"--calibrate {args.calibrate}"}):
            return _as_trained(x, model, config), condition, args.calibrate
    x, labels = runs.evaluation_data(config, runs.open_source(config))
    x = runs.as_model_input(x, model.event_shape, f"the run's {config['dataset']}")
    condition = commands.labels_as_conditions(model, labels, f"the run's {config['dataset']}")
    return x, condition, f"the {config['dataset']} test split"


def _as_trained(x, model, config):
    """x checked against the likelihood's support, then binarized as `evaluate` does for a run trained binarized."""
    from tfvae import checks

    checks.check_values(x, "x", model.likelihood_head)
    return runs.as_evaluated(config, x)


def _write_csv(path, scores, p_values, flagged, names):
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["index", "score", "p_value", "flagged"] + (["file"] if names else []))
    for i, (s, p, f) in enumerate(zip(scores, p_values, flagged)):
        writer.writerow([i, f"{s:.6f}", f"{p:.6f}", int(f)] + ([names[i]] if names else []))
    runs.write_text(path, text.getvalue())
