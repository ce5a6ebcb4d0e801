"""recipe-runner: Karpathy's recipe for training neural networks, as a config-driven runner."""

__version__ = "0.1.0"
