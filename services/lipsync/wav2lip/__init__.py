"""Wav2Lip as published (Prajwal et al., ACM MM 2020): the network, its mel spectrogram, the
S3FD face detector it ships with, and loaders for the official checkpoints."""
