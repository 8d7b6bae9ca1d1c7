"""The study: Optuna sweeps of many configurations (sweep), sequential rounds (rounds), and
the launchers that run workers on other machines."""
