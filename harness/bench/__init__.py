"""`odyssey bench`: how fast a study runs on this machine, against torch in the same run.

Nine sections (`bench.sections`), each a table on the terminal and a part of the JSON
written to results/bench/bench.json:

- `floor` (harness.bench.floor): the least work of a training step here, the two
  recurrent products (R y forward, R^T da backward) of one direction at batch 1, timed
  alone at each hidden size asked, compiled like the cell loops; and each model's
  trained step (and epoch with validation) in CPU time a frame, as a multiple of it;
- `layers` (harness.bench.layers): forward + backward of one layer of every model, fresh
  weights, against torch.nn.LSTM / GRU timed alternately in the same loop;
- `epochs` (harness.bench.epochs): epochs of the training recipe as a trial runs them
  (one update a sequence, then validation), fresh and after the network has trained
  (`warm` epochs untimed, then `timed` epochs), for every model and task asked, against
  torch.nn.LSTM (and torch.nn.GRU) in the same recipe, denormals flushed for both;
- `split` (harness.bench.split): where a trained epoch of the speech and handwriting
  tasks spends its time (the native step's phases, validation's forward and errors,
  Python) at several hidden sizes, against a bidirectional torch.nn.LSTM's epoch;
- `recipes` (harness.bench.recipes): trained JSB epochs of every training recipe
  (conf/train/) on the engine its trials use, and on the torch path for comparison;
- `study` (harness.bench.study): a small fixed full-protocol JSB study (configurations
  drawn once from Greff et al.'s space) with 1 and 2 worker processes: trials an hour,
  and the projected hours of 200-trial-a-model studies of each task on this machine;
- `lockstep` (harness.bench.lockstep): the same configurations one at a time (native
  engine) and K at a time (search.lockstep=K, and the K of auto): slot-epochs a second
  and full-protocol trials an hour (at the study section's mean epochs a trial);
- `scan` (harness.bench.scan): minGRU and minLSTM with the recurrence as a loop and as
  the chunked scan, forward + backward, against torch.nn.GRU / LSTM in the same loop;
- `turns` (harness.bench.turns): JSB training epochs of several models (vanilla, the GRU,
  the cells given as classes), one epoch of each in turn, against the first.

Every figure is measured on one torch thread a process, as sweep workers train.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from harness import kernels, project_root
from harness.bench.epochs import time_epochs
from harness.bench.floor import floor_table, time_floor
from harness.bench.layers import time_layers
from harness.bench.lockstep import time_lockstep
from harness.bench.recipes import time_recipes
from harness.bench.scan import time_scan
from harness.bench.split import split_table, time_split
from harness.bench.study import project_studies, time_study
from harness.bench.turns import time_in_turn
from harness.errors import UserError
from harness.models import names_of, resolve

SECTIONS = ("floor", "layers", "epochs", "split", "recipes", "study", "lockstep", "scan", "turns")


def bench(cfg) -> dict:
    options = cfg.bench
    sections = list(options.sections)
    if unknown := [s for s in sections if s not in SECTIONS]:
        raise UserError(f"bench.sections: unknown {unknown}; choose from {', '.join(SECTIONS)}.")
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    compiled = kernels.lstm() is not None
    print(f"odyssey bench: 1 torch thread, torch {torch.__version__}, "
          f"{'compiled' if compiled else 'Python'} loops, denormals flushed, sections {', '.join(sections)}",
          flush=True)
    result: dict = {"torch": torch.__version__, "threads": 1, "compiled_loops": compiled}
    if "floor" in sections:
        print("\nthe floor of a step (its recurrent products alone), and each model's trained step against it:")
        result["floor"] = time_floor(cfg, options.floor)
    if "layers" in sections:
        print("\nforward + backward of one layer (fresh weights), against torch in the same run:")
        models = [resolve(name).name for name in names_of(options.variants or "all", "vanilla", "bench.variants")]
        result["layers"] = time_layers(models, int(options.repeats))
    if "epochs" in sections:
        print("\nepochs of the training recipe, fresh and trained, against torch in the same recipe:")
        result["epochs"] = time_epochs(cfg, options.epochs)
    if "split" in sections:
        print("\nwhere a trained epoch spends its time (vanilla, native engine), against torch.nn.LSTM:")
        result["split"] = time_split(options.split)
    if "recipes" in sections:
        print("\nepochs of each training recipe (conf/train/), on its engine and on the torch path:")
        result["recipes"] = time_recipes(options.recipes)
    if "study" in sections:
        print("\na small full-protocol JSB study:")
        result["study"] = time_study(cfg, options.study)
        if "epochs" in result:
            result["projection"] = project_studies(result["study"], result["epochs"],
                                                   int(options.study.trials_per_model))
    if "lockstep" in sections:
        print("\nlockstep: trials one at a time against K at a time:")
        measured = result.get("study", {}).get("runs", [{}])[0].get("mean_epochs")
        result["lockstep"] = time_lockstep(cfg, options.lockstep, epochs_per_trial=measured)
    if "scan" in sections:
        print("\nminGRU and minLSTM: the recurrence as a loop and as a scan (forward + backward, fresh weights):")
        result["scan"] = time_scan(options.scan)
    if "turns" in sections:
        print("\nJSB training epochs, one of each model in turn, against the first:")
        result["turns"] = time_in_turn(cfg, options.turns)
    out = Path(options.out or project_root() / "results" / "bench" / "bench.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(markdown(result))
    print(f"\nwritten: {out} and {out.with_suffix('.md')} (the tables as Markdown)")
    return result


def markdown(result: dict) -> str:
    """The tables of a bench run as Markdown, for the README."""
    lines = []
    if result.get("floor"):
        lines += floor_table(result["floor"]) + [""]
    if result.get("epochs"):
        lines += ["| data set | model | fresh epoch (s) | trained epoch (s) | ratio, trained | against |",
                  "|---|---|---|---|---|---|"]
        for r in result["epochs"]:
            note = f" (stopped: {r['failure']})" if r.get("failure") else ""
            lines.append(f"| {r['dataset']} | {r['model']}{note} | {r['fresh_s']:.3f} | {r['trained_s']:.3f} | "
                         f"{r['ratio_trained']:.2f} | {r['reference']} |")
        lines.append("")
    if result.get("split"):
        lines += split_table(result["split"]) + [""]
    if result.get("recipes"):
        lines += ["| recipe (JSB, vanilla) | batch | engine | fresh epoch (s) | trained epoch (s) | torch path, trained (s) "
                  "| torch path slower |", "|---|---|---|---|---|---|---|"]
        for r in result["recipes"]:
            lines.append(f"| {r['recipe']} ({r['optimizer']}) | {r['batch_size']} | {r['engine']} | {r['fresh_s']:.3f} | "
                         f"{r['trained_s']:.3f} | {r['torch_trained_s']:.3f} | {r['torch_slower']:.2f}x |")
        lines.append("")
    if result.get("study"):
        lines += ["| JSB study, full protocol | workers | wall (s) | trials an hour | mean epochs | mean s a trial |",
                  "|---|---|---|---|---|---|"]
        for r in result["study"]["runs"]:
            how = f"{r['engine']}, {'flushed' if r['flush_denormal'] else 'not flushed'}"
            lines.append(f"| {how} | {r['workers']} | {r['wall_s']:.1f} | {r['trials_per_hour']:.0f} | "
                         f"{r['mean_epochs']:.1f} | {r['mean_trial_s']:.1f} |")
        lines.append("")
    if result.get("projection", {}).get("tasks"):
        projection = result["projection"]
        lines += [f"| projected study (11 models x 200 trials, 2 workers, speed-up {projection['speedup_2_workers']:.2f}x)"
                  " | vanilla trial (s) | hours | basis |", "|---|---|---|---|"]
        for dataset, r in projection["tasks"].items():
            lines.append(f"| {dataset} | {r['vanilla_trial_s']:.1f} | {r['study_hours']:.1f} | {r['basis']} |")
        lines.append("")
    if result.get("lockstep"):
        run = result["lockstep"]
        lines += [f"| lockstep, {run['dataset']} vanilla, {run['epochs']} epochs a configuration | K | slot-epochs/s "
                  f"| full-protocol trials an hour ({run['epochs_per_trial']:.0f} epochs) | against one at a time |",
                  "|---|---|---|---|---|"]
        for r in run["rows"]:
            lines.append(f"| {r['how']} | {r['slots']} | {r['slot_epochs_per_s']:.3f} | {r['trials_per_hour']:.1f} | "
                         f"{r['vs_one_at_a_time']:.2f}x |")
        lines.append("")
    if result.get("layers"):
        lines += ["| forward + backward, fresh | model | ours (ms) | reference | reference (ms) | ratio |",
                  "|---|---|---|---|---|---|"]
        for r in result["layers"]:
            lines.append(f"| N={r['hidden_size']} B={r['batch']} T={r['steps']} | {r['variant']} | {r['ms']:.2f} | "
                         f"{r['reference']} | {r['reference_ms']:.2f} | {r['ratio']:.2f} |")
        lines.append("")
    if result.get("turns"):
        first = result["turns"][0]
        lines += [f"| JSB training epoch, N={first['hidden_size']}, in turn ({first['rounds']} rounds) | engine "
                  f"| epoch (s) | against {first['first']} |", "|---|---|---|---|"]
        for r in result["turns"]:
            lines.append(f"| {r['model']} | {r['engine']} | {r['epoch_s']:.3f} | {r['vs_first']:.2f}x |")
        lines.append("")
    if result.get("scan"):
        lines += ["| forward + backward, fresh | model | loop (ms) | scan (ms) | scan / loop | auto | reference "
                  "| reference (ms) |", "|---|---|---|---|---|---|---|---|"]
        for r in result["scan"]:
            lines.append(f"| N={r['hidden_size']} B={r['batch']} T={r['steps']} | {r['model']} | {r['loop_ms']:.2f} | "
                         f"{r['scan_ms']:.2f} | {r['scan_vs_loop']:.2f} | {r['auto']} | {r['reference']} | "
                         f"{r['reference_ms']:.2f} |")
        lines.append("")
    return "\n".join(lines)
