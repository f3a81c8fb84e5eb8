"""FRE-RNN: recurrent nets trained by Equilibrium Propagation with feedback regulation."""

__version__ = "0.1.0"
