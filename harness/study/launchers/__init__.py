"""Where a sweep's workers run: `search.launcher`.

    local   worker processes on this machine (harness.study.sweep, the default)
    slurm   the tasks of one SLURM array job, each a worker on a shared storage
            (harness.study.launchers.slurm, through submitit)

`launch(cfg, variants)` is what `odyssey sweep` hands to `harness.study.sweep.sweep`, which calls
it once the config is checked; it returns None for the local launcher (the sweep runs its
own processes) and the study names otherwise. The launchers build on harness.study.sweep (a
SLURM task runs `run_worker`), so the sweep gets them from its caller and imports none.
"""

from __future__ import annotations

from harness.errors import UserError

LAUNCHERS = ("local", "slurm")


def launch(cfg, variants: list[str]) -> list[str] | None:
    launcher = cfg.search.get("launcher", "local")
    if launcher == "local":
        return None
    if launcher == "slurm":
        from harness.study.launchers.slurm import launch as launch_slurm

        return launch_slurm(cfg, variants)
    raise UserError(f"search.launcher='{launcher}' is unknown; use one of {', '.join(LAUNCHERS)}.")
