"""ponder: recurrent-depth reasoning models that think by looping one small network."""

__version__ = "0.1.0"
