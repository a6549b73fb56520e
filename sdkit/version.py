"""The version of sdkit (kept in its own module so any layer can read it without importing the package facade)."""
__version__ = "0.1.0"
