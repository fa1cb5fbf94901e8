"""Search backends (Optuna, Ray Tune) behind one run folder and one results schema."""
