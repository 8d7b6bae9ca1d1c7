"""format: wav_textgrid on files another tool wrote: flite's speech (8 kHz and 16 kHz
voices) with TextGrids written by praatio from flite's phone times (long and short format),
frame labels checked against a plain overlap count, resampling against scipy; a short-format
TextGrid written by hand with frame labels worked out by hand; every error names its file."""

import shutil
import subprocess
from math import ceil

import numpy as np
import pytest
import soundfile
from praatio import textgrid
from scipy.signal import resample_poly

from harness.datasets import SPLITS, load_dataset
from harness.datasets.speech_features import FeatureSettings, features
from harness.errors import UserError

SENTENCES = {"train": ["she had your dark suit in greasy wash water", "dont ask me to carry an oily rag like that"],
             "valid": ["dark suit in greasy water"], "test": ["dont ask me to carry that"]}  # the train words
VOICES = ("kal", "kal16")  # flite's 8 kHz and 16 kHz diphone voices


def config(path, tmp_path, **keys):
    return {"name": "aligned", "format": "wav_textgrid", "path": str(path), "task": "framewise",
            "cache_dir": str(tmp_path / "cache"), **keys}


def flite_recording(text, voice, wav):
    """Say `text` with flite; returns the phone intervals (start, end, phone) in seconds, as
    flite prints them with -psdur (each phone's end time), clipped to the audio."""
    done = subprocess.run(["flite", "-voice", voice, "-psdur", "-t", text, "-o", str(wav)],
                          capture_output=True, text=True, timeout=60, check=True)
    duration = soundfile.info(str(wav)).duration
    intervals, start = [], 0.0
    for token in done.stdout.split():
        phone, _, end = token.rpartition(":")
        end = min(float(end), duration)
        if end > start:
            intervals.append((start, end, "" if phone == "pau" else phone))  # pauses: empty = silence
            start = end
    if start < duration:
        intervals[-1] = (intervals[-1][0], duration, intervals[-1][2])
    return intervals, duration


@pytest.fixture(scope="module")
def flite_corpus(tmp_path_factory):
    if shutil.which("flite") is None:
        pytest.skip("flite is not installed (scripts/setup.sh installs it with apt-get; or: apt-get install flite)")
    root = tmp_path_factory.mktemp("aligned")
    alignments = {}
    for split in SPLITS:
        (root / split).mkdir()
        for n, text in enumerate(SENTENCES[split]):
            name = f"{split}/utt{n}"
            intervals, duration = flite_recording(text, VOICES[n % 2], root / f"{name}.wav")
            grid = textgrid.Textgrid()
            grid.addTier(textgrid.IntervalTier("words", [(0.0, duration, text)], 0.0, duration))
            grid.addTier(textgrid.IntervalTier("phones", [i for i in intervals if i[2]], 0.0, duration))
            grid.save(str(root / f"{name}.TextGrid"), format="long_textgrid" if split == "train" else "short_textgrid",
                      includeBlankSpaces=True)
            alignments[name] = intervals
    return root, alignments


def expected_labels(intervals, n_samples, rate=16000, window=400, step=160):
    """The label of each frame: the interval overlapping most of it (the earlier on a tie)."""
    samples = [(round(s * rate), round(e * rate), label or "sil") for s, e, label in intervals]
    count = 1 + ceil((n_samples - window) / step)
    labels = []
    for t in range(count):
        lo, hi = t * step, min(t * step + window, n_samples)
        overlaps = [max(0, min(hi, e) - max(lo, s)) for s, e, _ in samples]
        labels.append(samples[overlaps.index(max(overlaps))][2])
    return labels


def test_flite_recordings_with_praatio_textgrids(flite_corpus, tmp_path):
    root, alignments = flite_corpus
    data = load_dataset(config(root, tmp_path))
    train_phones = {label or "sil" for name, a in alignments.items() if name.startswith("train") for *_, label in a}
    assert data.classes == sorted(train_phones | {"sil"}) and data.n_outputs == len(data.classes)
    assert data.input_dim == 39 and data.bidirectional and data.task == "framewise"
    assert [s.name for s in data.train] == ["train/utt0", "train/utt1"]

    raw = {}
    for split in SPLITS:
        for sequence in data.split(split):
            signal, rate = soundfile.read(str(root / f"{sequence.name}.wav"), dtype="float64")
            if rate != 16000:  # the 8 kHz voice
                signal = resample_poly(signal, 16000 // rate, 1)
            raw[sequence.name] = features(signal, FeatureSettings())
            names = [data.classes[c] for c in sequence.y]
            assert names == expected_labels(alignments[sequence.name], len(signal)), sequence.name
    # normalised with the training frames' mean and deviation
    train = np.concatenate([raw["train/utt0"], raw["train/utt1"]]).astype(np.float64)
    mean, deviation = train.mean(0), train.std(0)
    assert np.allclose(data.test[0].x, (raw["test/utt0"] - mean) / deviation, atol=1e-4)
    assert np.allclose(np.concatenate([s.x for s in data.train]).mean(0), 0, atol=1e-4)
    assert data.info["recordings"] == {"train": 2, "valid": 1, "test": 1}


SHORT = """File type = "ooTextFile"
Object class = "TextGrid"

0
0.1
<exists>
2
"IntervalTier"
"words"
0
0.1
1
0
0.1
"two"
"IntervalTier"
"phones"
0
0.1
{n}
{intervals}
"""


def hand_written(root, split, name, intervals, samples=1600, rate=16000):
    """A recording of noise and a short-format TextGrid typed out as Praat writes it."""
    (root / split).mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(len(name)).uniform(-0.5, 0.5, size=samples)
    soundfile.write(str(root / split / f"{name}.wav"), noise, rate)
    lines = "\n".join(f"{start}\n{end}\n\"{label}\"" for start, end, label in intervals)
    (root / split / f"{name}.TextGrid").write_text(SHORT.format(n=len(intervals), intervals=lines))


# empty from 0 to 12.5 ms (samples 0..200), "a" to 50 ms (800), "b" to 100 ms (1600)
HAND = [(0, 0.0125, ""), (0.0125, 0.05, "a"), (0.05, 0.1, "b")]


def hand_corpus(root, valid=HAND):
    for split in SPLITS:
        hand_written(root, split, "one", valid if split == "valid" else HAND)
    return root


def test_frame_labels_worked_out_by_hand(tmp_path):
    data = load_dataset(config(hand_corpus(tmp_path / "d"), tmp_path))
    # 1600 samples: 9 frames of [160 t, 160 t + 400). Frame 0: 200 silence, 200 a (a tie:
    # the earlier, silence); 1: 40 / 360 -> a; 2: a; 3: a 320, b 80 -> a; 4: a 160, b 240 -> b.
    assert data.classes == ["a", "b", "sil"]
    assert [data.classes[c] for c in data.train[0].y] == ["sil", "a", "a", "a", "b", "b", "b", "b", "b"]
    listed = load_dataset(config(tmp_path / "d", tmp_path, classes=["sil", "a", "b", "c"]))
    assert listed.classes == ["sil", "a", "b", "c"] and listed.train[0].y.tolist() == [0, 1, 1, 1, 2, 2, 2, 2, 2]
    named = load_dataset(config(tmp_path / "d", tmp_path, silence_label="pause"))
    assert named.classes == ["a", "b", "pause"]


def test_the_features_are_cached(tmp_path):
    root = hand_corpus(tmp_path / "d")
    first, second = load_dataset(config(root, tmp_path)), load_dataset(config(root, tmp_path))
    assert not first.info["feature_cache_hit"] and second.info["feature_cache_hit"]
    assert np.array_equal(first.valid[0].x, second.valid[0].x)
    hand_written(root, "test", "one", [(0, 0.05, "a"), (0.05, 0.1, "b")])
    assert not load_dataset(config(root, tmp_path)).info["feature_cache_hit"]


def test_errors_name_the_file(tmp_path):
    root = hand_corpus(tmp_path / "d", valid=[(0, 0.05, "a"), (0.05, 0.1, "zh")])
    with pytest.raises(UserError, match=r"valid/one\.TextGrid has label 'zh', which the train split lacks"):
        load_dataset(config(root, tmp_path))
    with pytest.raises(UserError, match=r"train/one\.TextGrid has label 'b', which is not in dataset.classes"):
        load_dataset(config(root, tmp_path, classes=["sil", "a", "zh"]))
    with pytest.raises(UserError, match=r"one\.TextGrid has no tier 'segments' \(its tiers: words, phones\)"):
        load_dataset(config(root, tmp_path, tier="segments"))

    root = hand_corpus(tmp_path / "e")
    (root / "test" / "one.TextGrid").unlink()
    with pytest.raises(UserError, match=r"test/one\.wav has no TextGrid"):
        load_dataset(config(root, tmp_path))
    (root / "test" / "one.wav").unlink()
    hand_written(root, "test", "two", HAND)
    (root / "test" / "two.wav").unlink()
    with pytest.raises(UserError, match=r"test/two\.TextGrid has no WAV"):
        load_dataset(config(root, tmp_path))

    root = hand_corpus(tmp_path / "f")
    (root / "valid" / "one.TextGrid").write_text("not a TextGrid at all\n")
    with pytest.raises(UserError, match=r"valid/one\.TextGrid is not a readable Praat TextGrid"):
        load_dataset(config(root, tmp_path))
    hand_written(root, "valid", "one", HAND, samples=800)  # a recording of half the TextGrid's length
    with pytest.raises(UserError, match=r"valid/one\.TextGrid runs to 0\.100 s, past the end of its recording"):
        load_dataset(config(root, tmp_path))
    with pytest.raises(UserError, match="framewise only"):
        load_dataset(config(root, tmp_path, task="ctc"))
