"""Supervised atomistic models (Behler–Parrinello networks, kernel ridge, Gaussian processes),
the generic trainer, and loading saved models."""

from .autoencoders import VAE, AutoEncoder, load_autoencoder
from .base import AtomicData, AtomisticModel, NotFittedError, load_model
from .gaussian_process import GaussianProcess
from .io import ModelFileError
from .kernelridge import KernelRidge
from .neuralnetwork import NeuralNetwork, TrainingWarning
from .saved import SavedModel, load_saved
from .training import History, TrainingConfig, train

__all__ = [
    "AutoEncoder",
    "VAE",
    "load_autoencoder",
    "AtomicData",
    "AtomisticModel",
    "GaussianProcess",
    "History",
    "KernelRidge",
    "ModelFileError",
    "NeuralNetwork",
    "NotFittedError",
    "SavedModel",
    "TrainingConfig",
    "TrainingWarning",
    "load_model",
    "load_saved",
    "train",
]
