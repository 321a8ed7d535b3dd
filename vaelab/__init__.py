"""VAE / IWAE on MNIST: config, data, models, evaluation."""
