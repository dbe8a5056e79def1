"""carvana-kit: from the Carvana competition's data to a scored Kaggle submission."""

__version__ = "0.1.0"
