"""The methods study (results/methods): configs/default.py with one gradient method each."""
