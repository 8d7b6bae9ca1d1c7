"""`python -m harness.kernels`: build the compiled loops now (scripts/setup.sh runs this)."""

from harness import kernels

print("compiled LSTM loops:", "ready" if kernels.lstm() is not None else "unavailable (Python loops in use)")
