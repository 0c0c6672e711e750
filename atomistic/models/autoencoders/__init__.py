"""Autoencoders of scaled atomic features: ML4Chem's unsupervised atomistic models.

Inputs are scaled atomic features ``X`` (n_atoms, n_features), dimensionless, with the atoms'
atomic numbers ``numbers`` (n_atoms,). With ``per_element=True`` (the default) each element has its
own network (an ``nn.ModuleDict`` keyed by chemical symbol), as in Behler–Parrinello models; with
``per_element=False`` one network serves all elements.

``hiddenlayers`` follows ML4Chem: ``{"encoder": (20, 10, 4), "decoder": (4, 10, 20)}``; the last
encoder size is the latent dimension and the decoder tuple starts with it. The input width is taken
from the data, and the decoder's output layer maps back to it.

- :class:`AutoEncoder`: deterministic encoder and decoder, loss = mean squared error.
- :class:`VAE` (Kingma & Welling 2014, arXiv:1312.6114): Gaussian encoder q(z|x) = N(mu, diag
  sigma^2) with the reparameterisation z = mu + sigma * eps, prior N(0, I), and
  ``variant="multivariate"``: Gaussian decoder p(x|z) = N(mu_x, diag sigma_x^2), reconstruction
  term = Gaussian negative log-likelihood; ``variant="bernoulli"``: Bernoulli decoder (binary
  cross-entropy on logits) for features scaled to [0, 1].
  Loss per atom = reconstruction + beta(epoch) * KL,
  KL = -1/2 sum_k (1 + log s_k^2 - mu_k^2 - s_k^2) (Kingma & Welling 2014, appendix B).
  Cyclical annealing (Fu et al. 2019, NAACL, "Cyclical Annealing Schedule", eq. 5):
  tau = mod(t, ceil(T/M)) / (T/M), beta_t = beta * tau / R for tau <= R, else beta
  (T epochs, M cycles, ratio R, 0-based epoch t).

Training runs through :func:`atomistic.models.training.train`; one sample is one atom, so
``TrainingConfig.batch_size`` counts atoms here. Weights are saved with safetensors beside a JSON
card; nothing is pickled.

Modules: :mod:`.networks` (the torch networks, routed by element), :mod:`.autoencoder`
(:class:`AutoEncoder`: fitting, keys, persistence), :mod:`.vae` (:class:`VAE`: the variational
loss and the KL schedule).
"""

from atomistic.models.autoencoders.autoencoder import (
    ENCODER_CLASSES,
    FORMAT_VERSION,
    AutoEncoder,
    load_autoencoder,
)
from atomistic.models.autoencoders.vae import VAE

__all__ = ["ENCODER_CLASSES", "FORMAT_VERSION", "AutoEncoder", "VAE", "load_autoencoder"]
