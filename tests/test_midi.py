"""format: midi against rolls we know: MIDI files written with mido from the shipped JSB
rolls (type 0 and 1, several ticks-per-beat, held notes and re-struck ones, drums, tempo
changes) must read back as the same rolls; hand-worked sampling instants; every error
names its file; the parsed rolls are cached."""

import json

import mido
import numpy as np
import pytest

from harness import project_root
from harness.datasets import SPLITS, load_dataset
from harness.errors import UserError

JSB = project_root() / "datasets" / "jsb_chorales" / "jsb-chorales-quarter.json"
PIECES_A_SPLIT = 6


@pytest.fixture(scope="module")
def jsb():
    """The first few JSB pieces of each split as (T, 88) 0/1 rolls, built here from the JSON."""
    raw = json.loads(JSB.read_text())
    rolls = {}
    for split in SPLITS:
        rolls[split] = []
        for piece in raw[split][:PIECES_A_SPLIT]:
            roll = np.zeros((len(piece), 88), dtype=np.float32)
            for t, frame in enumerate(piece):
                roll[t, [note - 21 for note in frame]] = 1
            rolls[split].append(roll)
    return rolls


def held_notes(roll):
    """(first frame, frames held, key) of each run of a key that is on in consecutive frames."""
    notes = []
    for key in range(roll.shape[1]):
        on = np.concatenate([[0], roll[:, key], [0]])
        starts, stops = np.flatnonzero(np.diff(on) == 1), np.flatnonzero(np.diff(on) == -1)
        notes += [(int(s), int(e - s), key) for s, e in zip(starts, stops)]
    return notes


def track_of(events):
    """A MidiTrack from (absolute tick, message) pairs."""
    track, now = mido.MidiTrack(), 0
    for tick, message in sorted(events, key=lambda e: e[0]):
        track.append(message.copy(time=tick - now))
        now = tick
    return track


def write_type1(roll, file, tpb=480):
    """Type 1: a tempo track, the notes as held notes (runs merged) on two channels, and a drum track."""
    T = len(roll)
    tempo = [(0, mido.MetaMessage("set_tempo", tempo=500000)), (3 * tpb, mido.MetaMessage("set_tempo", tempo=700000)),
             (T * tpb, mido.MetaMessage("end_of_track"))]
    notes = []
    for start, length, key in held_notes(roll):
        channel = key % 2  # two instruments, neither the drums
        notes.append((start * tpb, mido.Message("note_on", note=key + 21, velocity=80, channel=channel)))
        notes.append(((start + length) * tpb, mido.Message("note_off", note=key + 21, velocity=0, channel=channel)))
    # drums on channel 10 (index 9) every beat, one pitch far outside the piano: all ignored
    drums = [(t * tpb + d, mido.Message(kind, note=pitch, velocity=90, channel=9))
             for t in range(T) for pitch in (5, 36) for d, kind in ((0, "note_on"), (tpb // 2, "note_off"))]
    midi = mido.MidiFile(type=1, ticks_per_beat=tpb)
    midi.tracks += [track_of(tempo), track_of(notes), track_of(drums)]
    midi.save(str(file))


def write_type0(roll, file, tpb=96):
    """Type 0: one track, every frame's notes struck anew (note_on velocity 0 as the note-off)."""
    events = [(0, mido.MetaMessage("set_tempo", tempo=400000))]
    for t, frame in enumerate(roll):
        for key in np.flatnonzero(frame):
            events.append(((t + 1) * tpb, mido.Message("note_on", note=int(key) + 21, velocity=0)))
            events.append((t * tpb, mido.Message("note_on", note=int(key) + 21, velocity=64)))
    events.append((len(roll) * tpb, mido.MetaMessage("end_of_track")))
    midi = mido.MidiFile(type=0, ticks_per_beat=tpb)
    # a release and a new strike of the same key at one tick: the release comes first in the file
    midi.tracks.append(track_of(sorted(events, key=lambda e: (e[0], e[1].type == "note_on" and e[1].velocity > 0))))
    midi.save(str(file))


def write_folder(root, rolls, writer, **options):
    for split in SPLITS:
        (root / split).mkdir(parents=True, exist_ok=True)
        for n, roll in enumerate(rolls[split]):
            writer(roll, root / split / f"piece{n:02d}.mid", **options)
    return root


def config(path, tmp_path, **keys):
    return {"name": "songs", "format": "midi", "path": str(path), "task": "next_step",
            "cache_dir": str(tmp_path / "cache"), **keys}


def assert_same_rolls(data, rolls, frames_per_beat=1):
    for split in SPLITS:
        read = data.split(split)
        assert len(read) == len(rolls[split])
        for sequence, roll in zip(read, rolls[split]):
            expected = np.repeat(roll, frames_per_beat, axis=0)
            assert np.array_equal(sequence.x, expected[:-1]) and np.array_equal(sequence.y, expected[1:])


def test_type1_round_trip(tmp_path, jsb):
    root = write_folder(tmp_path / "songs", jsb, write_type1)
    assert mido.MidiFile(str(root / "train" / "piece00.mid")).type == 1
    data = load_dataset(config(root, tmp_path))
    assert_same_rolls(data, jsb)
    assert data.input_dim == data.n_outputs == 88 and data.task == "next_step"
    summary = data.summary()
    frames = {split: sum(len(r) for r in jsb[split]) for split in SPLITS}
    assert summary["train"] == {"sequences": PIECES_A_SPLIT, "frames": frames["train"] - PIECES_A_SPLIT}
    assert summary["pieces"] == {split: PIECES_A_SPLIT for split in SPLITS}
    assert summary["piece_frames"] == frames and summary["notes_dropped"] == 0
    assert data.train[0].name == "train/piece00.mid"


@pytest.mark.parametrize("frames_per_beat", [1, 2, 3])
def test_type0_round_trip_on_finer_grids(tmp_path, jsb, frames_per_beat):
    root = write_folder(tmp_path / "songs", jsb, write_type0)
    assert mido.MidiFile(str(root / "valid" / "piece00.mid")).type == 0
    assert_same_rolls(load_dataset(config(root, tmp_path, frames_per_beat=frames_per_beat)), jsb, frames_per_beat)


def one_piece_folder(tmp_path, events, tpb=4, midi_type=0):
    """A data set whose three splits each hold the one file written from (tick, message) events."""
    root = tmp_path / "songs"
    for split in SPLITS:
        (root / split).mkdir(parents=True, exist_ok=True)
        midi = mido.MidiFile(type=midi_type, ticks_per_beat=tpb)
        midi.tracks.append(track_of(events))
        midi.save(str(root / split / "one.mid"))
    return root


def note(start, stop, pitch, channel=0):
    return [(start, mido.Message("note_on", note=pitch, velocity=70, channel=channel)),
            (stop, mido.Message("note_off", note=pitch, channel=channel))]


def test_sampling_instants_by_hand(tmp_path):
    # tpb 4. A: ticks 2..5, B: 4..8, C: 0..1, D: 9..9 (zero length), E: 10..never released;
    # the end of track at tick 12.
    events = note(2, 5, 60) + note(4, 8, 62) + note(0, 1, 64) + note(9, 9, 65) + note(10, 12, 67)[:1]
    events.append((12, mido.MetaMessage("end_of_track")))
    root = one_piece_folder(tmp_path, events)
    keys = {60: 60 - 21, 62: 62 - 21, 64: 64 - 21, 65: 65 - 21, 67: 67 - 21}

    def frames_on(data):
        roll = np.concatenate([data.train[0].x[:1], data.train[0].y])  # the whole roll back
        return {pitch: np.flatnonzero(roll[:, key]).tolist() for pitch, key in keys.items()}

    # one frame a beat: instants 0, 4, 8 (three before the end at 12)
    assert frames_on(load_dataset(config(root, tmp_path))) == {60: [1], 62: [1], 64: [0], 65: [], 67: []}
    # three a beat: instants 0, 4/3, 8/3, 4, 16/3, 20/3, 8, 28/3, 32/3 (the nine before 12)
    by_thirds = frames_on(load_dataset(config(root, tmp_path, frames_per_beat=3)))
    assert by_thirds == {60: [2, 3], 62: [3, 4, 5], 64: [0], 65: [], 67: [8]}


def test_a_re_struck_key_sounds_until_its_last_release(tmp_path):
    # 60 struck at 0 and again at 4 (no release in between), released at 8 and 12:
    # it sounds from 0 to 12. Instants 0, 4, 8, 12 before the end at 16.
    events = [(0, mido.Message("note_on", note=60, velocity=70)), (4, mido.Message("note_on", note=60, velocity=70)),
              (8, mido.Message("note_off", note=60)), (12, mido.Message("note_off", note=60)),
              (16, mido.MetaMessage("end_of_track"))]
    data = load_dataset(config(one_piece_folder(tmp_path, events), tmp_path))
    roll = np.concatenate([data.train[0].x[:1], data.train[0].y])
    assert roll[:, 60 - 21].tolist() == [1, 1, 1, 0]


def test_out_of_range_notes_are_an_error_or_dropped(tmp_path):
    events = note(0, 4, 60) + note(4, 8, 110) + note(8, 12, 20) + [(16, mido.MetaMessage("end_of_track"))]
    root = one_piece_folder(tmp_path, events)
    with pytest.raises(UserError) as caught:
        load_dataset(config(root, tmp_path))
    message = str(caught.value)
    assert "one.mid" in message and "note 110" in message and "out_of_range=drop" in message
    data = load_dataset(config(root, tmp_path, out_of_range="drop"))
    assert data.info["notes_dropped"] == 3 * 2  # two notes in each split's file
    roll = np.concatenate([data.train[0].x[:1], data.train[0].y])
    assert roll.sum() == 1 and roll[0, 60 - 21] == 1


def test_bad_files_name_themselves(tmp_path):
    root = write_folder(tmp_path / "songs", {s: [np.eye(88, dtype=np.float32)[[0, 1]]] for s in SPLITS}, write_type0)
    (root / "valid" / "notes.mid").write_text("these are not MIDI bytes\n")
    with pytest.raises(UserError, match=r"valid/notes\.mid is not a readable MIDI file"):
        load_dataset(config(root, tmp_path))
    (root / "valid" / "notes.mid").unlink()

    empty = mido.MidiFile(type=1)
    empty.tracks.append(track_of([(0, mido.MetaMessage("set_tempo", tempo=500000))]))
    empty.tracks.append(track_of(note(0, 480, 36, channel=9)))  # drums only: no notes that count
    empty.save(str(root / "test" / "drums.mid"))
    with pytest.raises(UserError, match=r"test/drums\.mid holds no notes"):
        load_dataset(config(root, tmp_path))
    (root / "test" / "drums.mid").unlink()

    three = mido.MidiFile(type=2, ticks_per_beat=4)
    three.tracks.append(track_of(note(0, 8, 60)))
    three.save(str(root / "train" / "patterns.mid"))
    with pytest.raises(UserError, match=r"patterns\.mid is a type 2"):
        load_dataset(config(root, tmp_path))
    (root / "train" / "patterns.mid").unlink()

    (root / "test" / "piece00.mid").unlink()
    with pytest.raises(UserError, match=r"test holds no \.mid"):
        load_dataset(config(root, tmp_path))
    with pytest.raises(UserError, match="next_step only"):
        load_dataset(config(root, tmp_path, task="framewise"))


def test_the_rolls_are_cached_and_a_changed_file_is_parsed_again(tmp_path, jsb):
    root = write_folder(tmp_path / "songs", jsb, write_type1)
    first = load_dataset(config(root, tmp_path))
    second = load_dataset(config(root, tmp_path))
    assert not first.info["roll_cache_hit"] and second.info["roll_cache_hit"]
    assert first.info["roll_cache"] == second.info["roll_cache"]
    assert_same_rolls(second, jsb)
    assert not load_dataset(config(root, tmp_path, frames_per_beat=2)).info["roll_cache_hit"]  # other settings

    changed = {**jsb, "test": [jsb["test"][1]] + jsb["test"][1:]}
    write_type1(changed["test"][0], root / "test" / "piece00.mid")
    third = load_dataset(config(root, tmp_path))
    assert not third.info["roll_cache_hit"]
    assert_same_rolls(third, changed)


# ------------------------------------- a folder of MIDI files and a variant of one's own

@pytest.mark.slow
def test_a_midi_folder_and_a_user_variant_go_through_sweep_and_analyze(tmp_path, jsb):
    """The README's walk-through: MIDI files and a two-line variant file, given only as
    configs in a user directory, are swept (2 trials of vanilla and of the new variant) and
    analysed; a misspelt switch is one line, exit 2."""
    import subprocess
    import sys

    songs = write_folder(tmp_path / "songs", {s: rolls[:3] for s, rolls in jsb.items()}, write_type1)
    conf = tmp_path / "myconf"
    (conf / "dataset").mkdir(parents=True)
    (conf / "variant").mkdir()
    (conf / "dataset" / "bach_midi.yaml").write_text(
        f"name: bach_midi\nformat: midi\npath: {songs}\ntask: next_step\ncache_dir: {tmp_path / 'cache'}\n")
    (conf / "variant" / "cifg_np.yaml").write_text(  # the README's two-line variant file
        "name: cifg_np\nswitches: {forget_gate: coupled, peepholes: false}\n")
    (conf / "variant" / "typo.yaml").write_text("name: typo\nswitches: {peephole: false}\n")
    storage = f"sqlite:///{tmp_path}/studies.db"

    def odyssey(*arguments):
        return subprocess.run([sys.executable, "-m", "harness.cli", *arguments], cwd=project_root(),
                              capture_output=True, text=True, timeout=600)

    run = odyssey("sweep", "--config-dir", str(conf), "dataset=bach_midi", "variant=vanilla,cifg_np",
                  "search.n_trials=2", "max_epochs=1", f"search.storage={storage}")
    assert run.returncode == 0, run.stderr
    out = tmp_path / "analysis"
    run = odyssey("analyze", "analysis.dataset=bach_midi", f"analysis.storage={storage}", f"analysis.out={out}")
    assert run.returncode == 0, run.stderr
    trials = (out / "trials.csv").read_text().splitlines()
    assert len(trials) == 1 + 4 and sum(line.startswith("cifg_np,") for line in trials) == 2, trials
    assert (out / "report.md").exists() and "cifg_np" in (out / "variants.csv").read_text()
    metrics = sorted((project_root() / "results" / "sweeps").glob("*/bach_midi.cifg_np/trial_0000/metrics.json"))
    data = json.loads(metrics[-1].read_text())["data"]
    assert data["pieces"] == {"train": 3, "valid": 3, "test": 3} and data["input_dim"] == 88

    run = odyssey("sweep", "--config-dir", str(conf), "dataset=bach_midi", "variant=typo", "search.n_trials=1",
                  f"search.storage={storage}")
    assert run.returncode == 2 and "peephole is not a switch" in run.stderr and "Traceback" not in run.stderr
