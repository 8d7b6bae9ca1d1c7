"""A folder of MIDI files as piano rolls, for next-step prediction like the JSB roll.

Entry point: `read(cfg, path) -> DataSplits`. `path` is a folder holding

    train/   one piece a file: *.mid or *.midi (standard MIDI file, type 0 or 1),
    valid/   in the folder itself or in subfolders of it (sorted by their path)
    test/

Each piece becomes an 88-key roll (MIDI 21..108 by default), sampled on a beat grid of
`frames_per_beat` frames a quarter note (default 1: quarter notes, as the standard JSB
roll), counted in the file's own ticks per beat, so tempo changes do not move the grid.
Frame k samples the instant k * ticks_per_beat / frames_per_beat (in ticks, from the
start of the file), and a key is on in frame k if a note of that pitch sounds at that
instant: it started at or before it and ends after it (a note from tick s to tick e, end
exclusive, is on in the frames k with s <= k * tpb / fpb < e). The piece has one frame
for each sampling instant before its end, the last event of any track (its end-of-track
marker, usually), so a rest at the end stays. A note is a note-on with velocity > 0 to
the next note-off (or note-on with velocity 0) of the same channel and pitch; a pitch
struck again while it sounds keeps sounding until all its strikes are released; a note
never released sounds to the end. The drum channel (channel 10, index 9) is ignored.
The task is `next_step`: x is frames 0..T-2 and y frames 1..T-1, float32 (T-1, keys).

Dataset config keys (besides name, format: midi, path, task: next_step):

    frames_per_beat: 1     # frames a quarter note (2: eighth notes, 4: sixteenths)
    lowest_note: 21        # MIDI number of the first key (A0) ...
    keys: 88               # ... and the number of keys (21..108, the piano)
    out_of_range: error    # error | drop: a note outside the keys stops the reading with
                           # the file named, or is left out (and counted in the data block)
    cache_dir: null        # where parsed rolls are kept; null: results/cache

Errors, each naming the file: a file that is not MIDI or is damaged, type 2 (independent
sequences), SMPTE time division (no beats), a piece without notes, a piece shorter than two
frames, a note out of range (unless `out_of_range: drop`).

The rolls are parsed once and cached in `<cache_dir>/<name>/midi-<hash>.npz`, the hash
taken over the settings and the list of files (path, size, modification time), so the
trials of a sweep do not parse the files again; a changed file or setting parses anew.

The MIDI library is mido (pinned in constraints.txt): it is pure Python without
dependencies, reads and writes type 0 and type 1 files, and gives every message in the
file's own ticks, which is exactly the unit of a beat grid. pretty_midi (built on mido)
converts everything to seconds through the tempo map, which a beat grid would have to
undo; symusic is fast, but a compiled extension we do not need for a one-off parse that is
cached.
"""

from __future__ import annotations

import time
from pathlib import Path

import mido
import numpy as np

from harness.datasets import SPLITS, DataSplits, Sequence, config_choice, config_value, format_task, split_folders
from harness.datasets.cache import cache_file, cached
from harness.errors import UserError

SUFFIXES = (".mid", ".midi")
DRUM_CHANNEL = 9  # channel 10 in the 1-based numbering of the MIDI standard
OUT_OF_RANGE = ("error", "drop")
CACHE_VERSION = 1  # bump when the cached content changes meaning


def _positive_int(cfg, key: str, default: int) -> int:
    value = config_value(cfg, key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"dataset key {key}={value!r} must be a positive integer.")
    return value


def notes_of(file: Path) -> tuple[list[tuple[int, int, int, int]], int, int]:
    """The notes of a MIDI file as (start tick, end tick, pitch, channel), end exclusive,
    with the file's ticks per beat and its end (the last event of any track), in ticks.

    Drum-channel notes are left out. UserError for a file mido cannot read, type 2 and
    SMPTE timing.
    """
    try:
        midi = mido.MidiFile(str(file))
    except Exception as error:  # mido raises OSError, EOFError, ValueError, KeyError... for a bad file
        raise UserError(f"{file} is not a readable MIDI file ({type(error).__name__}: {error}); "
                        "remove it or export it again as a standard MIDI file.") from None
    if midi.type == 2:
        raise UserError(f"{file} is a type 2 MIDI file (independent sequences), which has no single time line; "
                        "save it as type 0 or 1.")
    tpb = int(midi.ticks_per_beat)
    if not 0 < tpb < 0x8000:  # the top bit of the division set: SMPTE frames, not beats
        raise UserError(f"{file} counts time in SMPTE frames, not beats (division {tpb}); save it with a "
                        "ticks-per-beat division.")
    events = []  # (tick, 1 for on / 0 for off, channel, pitch), in file order within a tick
    end = 0
    for track in midi.tracks:
        tick = 0
        for message in track:
            tick += message.time
            end = max(end, tick)
            if message.type not in ("note_on", "note_off") or message.channel == DRUM_CHANNEL:
                continue
            on = message.type == "note_on" and message.velocity > 0
            events.append((tick, int(on), message.channel, message.note))
    events.sort(key=lambda event: event[0])  # stable: a note on and off at one tick stays that way round
    sounding: dict[tuple[int, int], tuple[int, int]] = {}  # (channel, pitch) -> (start, strikes)
    notes = []
    for tick, on, channel, pitch in events:
        key = (channel, pitch)
        if on:
            start, strikes = sounding.get(key, (tick, 0))
            sounding[key] = (start, strikes + 1)
        elif key in sounding:
            start, strikes = sounding[key]
            if strikes > 1:
                sounding[key] = (start, strikes - 1)
            else:
                del sounding[key]
                notes.append((start, tick, pitch, channel))
    notes.extend((start, end, pitch, channel) for (channel, pitch), (start, _) in sounding.items())
    return sorted(notes), tpb, end


def roll_of(file: Path, frames_per_beat: int, lowest_note: int, keys: int, out_of_range: str) -> tuple[np.ndarray, int]:
    """The (T, keys) 0/1 roll of one file (module docstring) and the number of notes dropped."""
    notes, tpb, end = notes_of(file)
    if not notes:
        raise UserError(f"{file} holds no notes (outside the drum channel); remove it from the data set.")
    # Frame k samples tick k * tpb / fpb; in integers, tick t is at or before frame k's
    # instant when t * fpb <= k * tpb, so the first frame at or after t is ceil(t * fpb / tpb).
    def first_frame_from(tick: int) -> int:
        return -(-tick * frames_per_beat // tpb)

    n_frames = first_frame_from(end)  # the instants before the end
    roll = np.zeros((n_frames, keys), dtype=np.uint8)
    dropped = 0
    for start, stop, pitch, channel in notes:
        key = pitch - lowest_note
        if not 0 <= key < keys:
            if out_of_range == "drop":
                dropped += 1
                continue
            raise UserError(f"{file}: note {pitch} (channel {channel + 1}, tick {start}) is outside MIDI "
                            f"{lowest_note}..{lowest_note + keys - 1}; set dataset.out_of_range=drop to leave such "
                            "notes out, or widen dataset.lowest_note / dataset.keys.")
        roll[first_frame_from(start):first_frame_from(stop), key] = 1
    if n_frames < 2:
        raise UserError(f"{file} lasts {n_frames} frame(s) at frames_per_beat={frames_per_beat}, but next-step "
                        "prediction needs at least 2; raise dataset.frames_per_beat or remove the file.")
    return roll, dropped


def find_pieces(root: Path) -> dict[str, list[Path]]:
    """The MIDI files of each split folder, sorted by path; UserError for a missing or empty folder."""
    pieces = {}
    for split, folder in split_folders(root, "midi", "MIDI files (.mid or .midi)").items():
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
        if not files:
            raise UserError(f"{folder} holds no .mid or .midi files; every split needs at least one piece.")
        pieces[split] = files
    return pieces


def parse_all(pieces: dict[str, list[Path]], settings: dict, root: Path) -> dict[str, np.ndarray]:
    """Every piece's roll, as the arrays the cache holds: rolls uint8 (sum T, keys), lengths,
    split (index into SPLITS) and names of each piece, and the notes dropped in each."""
    rolls, lengths, split_of, names, dropped = [], [], [], [], []
    for index, split in enumerate(SPLITS):
        for file in pieces[split]:
            roll, n_dropped = roll_of(file, **settings)
            rolls.append(roll)
            lengths.append(len(roll))
            split_of.append(index)
            names.append(str(file.relative_to(root)))
            dropped.append(n_dropped)
    return {"rolls": np.concatenate(rolls), "lengths": np.array(lengths, dtype=np.int64),
            "split": np.array(split_of, dtype=np.int64), "names": np.array(names, dtype=str),
            "dropped": np.array(dropped, dtype=np.int64)}


def read(cfg, path) -> DataSplits:
    """Read the MIDI folder at `path` as configured by `cfg` (keys in the module docstring)."""
    name = str(config_value(cfg, "name", "midi"))
    format_task(cfg, "midi", "next_step")
    out_of_range = config_choice(cfg, "out_of_range", OUT_OF_RANGE)
    settings = {"frames_per_beat": _positive_int(cfg, "frames_per_beat", 1),
                "lowest_note": int(config_value(cfg, "lowest_note", 21)), "keys": _positive_int(cfg, "keys", 88),
                "out_of_range": out_of_range}
    root = Path(path)
    pieces = find_pieces(root)
    started = time.time()
    files = [file for split in SPLITS for file in pieces[split]]
    cache_path = cache_file(cfg, name, "midi", {"version": CACHE_VERSION, **settings}, files, root)
    arrays, hit = cached(cache_path, [str(file.relative_to(root)) for file in files],
                         lambda: parse_all(pieces, settings, root))
    seconds = time.time() - started

    rolls = arrays["rolls"].astype(np.float32)
    offsets = np.concatenate([[0], np.cumsum(arrays["lengths"])])
    splits = {split: [] for split in SPLITS}
    for n, (split_index, piece) in enumerate(zip(arrays["split"], arrays["names"])):
        roll = rolls[offsets[n]:offsets[n + 1]]
        splits[SPLITS[split_index]].append(Sequence(x=roll[:-1], y=roll[1:], name=str(piece)))
    info = {
        "directory": str(root),
        "pieces": {split: len(pieces[split]) for split in SPLITS},
        "piece_frames": {split: int(arrays["lengths"][arrays["split"] == i].sum()) for i, split in enumerate(SPLITS)},
        "frames_per_beat": settings["frames_per_beat"],
        "lowest_note": settings["lowest_note"],
        "out_of_range": out_of_range,
        "notes_dropped": int(arrays["dropped"].sum()),
        "roll_cache": str(cache_path),
        "roll_cache_hit": hit,
        "parse_seconds": round(seconds, 2),
    }
    keys = settings["keys"]
    return DataSplits(name=name, task="next_step", input_dim=keys, n_outputs=keys, bidirectional=False,
                      info=info, **splits)
