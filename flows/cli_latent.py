"""``atompipe latent``: an autoencoder or VAE trained on stored features, its latent group
written to the store. torch is imported inside the command only."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.cli_common import DEFAULT_STORE, StoreOption, fail
from flows.cli_signals import exit_interrupted, stoppable, stopped

_NOT_REF = ("map", "samples")  # what run_latent adds to the latent group's reference


def latent(
    features_key: Annotated[str, typer.Argument(help="feature key (from `atompipe featurize`)")],
    store: StoreOption = DEFAULT_STORE,
    workspace: Annotated[Path, typer.Option(help="where the encoder is saved")] = Path("workspace"),
    kind: Annotated[str, typer.Option(help="autoencoder | vae")] = "autoencoder",
    encoder: Annotated[str, typer.Option(help="encoder widths; the last is the code")] = "20,10,4",
    decoder: Annotated[str | None, typer.Option(help="decoder widths (default: mirrored)")] = None,
    activation: Annotated[str, typer.Option()] = "tanh",
    variant: Annotated[str, typer.Option(help="VAE: multivariate | bernoulli")] = "multivariate",
    beta: Annotated[float, typer.Option(help="VAE: KL weight")] = 1.0,
    shared: Annotated[bool, typer.Option("--shared", help="one network for all elements")] = False,
    epochs: Annotated[int, typer.Option()] = 100,
    batch_size: Annotated[int, typer.Option()] = 256,
    lr: Annotated[float, typer.Option()] = 1e-3,
    seed: Annotated[int, typer.Option(help="split and training seed")] = 0,
    scaler: Annotated[str, typer.Option(help="minmax | standard")] = "minmax",
    map_png: Annotated[Path | None, typer.Option("--map", help="save the latent map here")] = None,
    samples: Annotated[int, typer.Option(help="VAE: decode this many prior samples")] = 0,
    samples_out: Annotated[Path, typer.Option(help="where the samples go (.npz)")] = Path(
        "latent_samples.npz"
    ),
) -> None:
    """Train an autoencoder or VAE on stored features; write latent/<key>; print its key."""
    from pydantic import ValidationError

    from atomistic.storage import StoreError
    from flows.config import AutoEncoderSettings, ScalerConfig, SplitConfig

    enc = _layers(encoder, "--encoder")
    dec = _layers(decoder, "--decoder") if decoder else tuple(reversed(enc))
    try:
        vae = {"variant": variant, "beta": beta} if kind == "vae" else {}
        settings = AutoEncoderSettings.model_validate(
            {
                "kind": kind,
                "hiddenlayers": {"encoder": enc, "decoder": dec},
                "activation": activation,
                "per_element": not shared,
                "training": {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed},
                **vae,
            }
        )
        bernoulli = kind == "vae" and variant == "bernoulli"
        scaling = ScalerConfig.model_validate(
            {"kind": scaler, "feature_range": (0.0, 1.0) if bernoulli else (-1.0, 1.0)}
        )
    except ValidationError as exc:
        fail("; ".join(f"{_option(e['loc'])}: {e['msg']}" for e in exc.errors()))
    if samples and kind != "vae":
        fail("--samples needs --kind vae (an autoencoder has no prior to sample)")
    from flows.latent import run_latent

    split = SplitConfig(seed=seed)
    try:  # SIGINT/SIGTERM stop the encoder's training at its next batch, as for `run`
        ref = stoppable(
            lambda: run_latent(
                store,
                features_key,
                str(workspace),
                settings.canonical(),
                scaling.model_dump(mode="json"),
                {"fractions": list(split.fractions), "seed": split.seed},
                map_path=map_png,
                samples=samples,
            )
        )
    except BaseException as exc:
        if stopped(exc):
            exit_interrupted(f"latent features of {features_key}")
        if isinstance(exc, KeyError | ValueError | StoreError | OSError):
            fail(exc)
        raise
    from tasks.refs import FeatureRef

    made = FeatureRef.of({k: v for k, v in ref.items() if k not in _NOT_REF})
    typer.echo(f"latent {made.key}")
    typer.echo(f"  encoder                    {made.encoder_dir}")
    typer.echo(f"  reconstruction MSE (test)  {made.reconstruction_mse_test:.4g}")
    typer.echo(f"  scaled feature variance    {made.scaled_variance_test:.4g}")
    if made.kl_test is not None:
        typer.echo(f"  KL per atom (test, nats)   {made.kl_test:.4g}")
    if "map" in ref:
        typer.echo(f"  latent map                 {ref['map']}")
    if "samples" in ref:
        import numpy as np

        np.savez(samples_out, **ref["samples"])
        typer.echo(f"  {samples} decoded samples per element -> {samples_out}")


def _layers(text: str, option: str) -> tuple[int, ...]:
    """Comma-separated layer widths (``20,10,4``) as a tuple, or exit with an error.

    Parameters
    ----------
    text : str
        The option's value.
    option : str
        The option's name, for the error line.

    Returns
    -------
    tuple of int
        The widths, each at least 1.
    """
    try:
        layers = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        layers = ()
    if not layers or min(layers) < 1:
        fail(f"{option} {text!r}: expected comma-separated positive widths, e.g. 20,10,4")
    return layers


def _option(loc: tuple) -> str:
    """The command-line option behind a settings field: ("training", "epochs") -> --epochs."""
    name = str(loc[-1]) if loc else ""
    return {"hiddenlayers": "--encoder/--decoder", "per_element": "--shared"}.get(
        str(loc[0]) if loc else "", "--" + name.replace("_", "-")
    )
