"""`python -m harness.kernels`: build the compiled loops now (scripts/setup.sh runs this)."""

from harness import kernels

for name, build in (("LSTM", kernels.lstm), ("GRU", kernels.gru), ("gated-feedback", kernels.gated_feedback),
                    ("CTC", kernels.ctc)):
    print(f"compiled {name} loops:", "ready" if build() is not None else "unavailable (Python loops in use)")
