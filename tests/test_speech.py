"""Speech data: the TIMIT reader, its features and labels, and the flite stand-in.

Fast tests build tiny TIMIT trees in tmp_path from synthetic tones; the MFCCs are checked
against a computation written here from the definitions (DFT by matrix, mel triangles,
DCT-II by its cosine sum). The slow test runs flite.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
from omegaconf import OmegaConf

from harness.datasets import load_dataset
from harness.datasets import speech_features
from harness.datasets import timit, timit_like
from harness.errors import UserError

RATE = 16000
CONF = Path(__file__).resolve().parent.parent / "conf" / "dataset"


# ---------------------------------------------------------------- tiny trees

def write_utterance(root: Path, part: str, dialect: str, speaker: str, name: str,
                    phones: list[tuple[str, int]], riff: bool = False, upper: bool = True, seed: int = 0) -> Path:
    """One recording of tones, a phone a tone, and its .PHN; returns the .WAV path."""
    case = str.upper if upper else str.lower
    folder = root / case(part) / case(dialect) / case(speaker)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pieces, lines, start = [], [], 0
    for k, (phone, length) in enumerate(phones):
        t = np.arange(length) / RATE
        pieces.append(0.3 * np.sin(2 * np.pi * (300 + 170 * k) * t) + 0.01 * rng.standard_normal(length))
        lines.append(f"{start} {start + length} {phone}\n")
        start += length
    wav = folder / case(f"{name}.wav")
    if riff:
        soundfile.write(str(wav), np.concatenate(pieces), RATE, format="WAV", subtype="PCM_16")
    else:
        soundfile.write(str(wav), np.concatenate(pieces), RATE, format="NIST", subtype="PCM_16")
    (folder / case(f"{name}.phn")).write_text("".join(lines))
    return wav


SAY = [("h#", 2000), ("sh", 1600), ("iy", 2400), ("hh", 800), ("ae", 2400), ("d", 900), ("h#", 1900)]


def small_tree(root: Path) -> Path:
    """TRAIN: two speakers (SA1, SX1, SI1 each); TEST: a development, a core-test and an unused speaker."""
    for speaker, dialect in (("fcjf0", "dr1"), ("mdpk0", "dr2")):
        for i, name in enumerate(("sa1", "sx1", "si1")):
            write_utterance(root, "train", dialect, speaker, name, SAY[i:] + SAY[:i], seed=i)
    write_utterance(root, "test", "dr1", "faks0", "sx2", SAY, riff=True)   # development set
    write_utterance(root, "test", "dr1", "faks0", "sa2", SAY)
    write_utterance(root, "test", "dr1", "mdab0", "si3", SAY[::-1])        # core test set
    write_utterance(root, "test", "dr3", "mxyz0", "sx4", SAY)              # in neither list
    return root


def config(root: Path, tmp_path: Path, **changes) -> dict:
    cfg = dict(name="tiny", format="timit", path=str(root), task="framewise", bidirectional=True,
               split="halberstadt", phones="timit61", cache_dir=str(tmp_path / "cache"))
    cfg.update(changes)
    return cfg


# ---------------------------------------------------------------- reader and splits

def test_reader_halberstadt_split(tmp_path):
    root = small_tree(tmp_path / "TIMIT")
    data = timit.read(config(root, tmp_path), root)
    assert [s.name for s in data.train] == ["train/dr1/fcjf0/si1", "train/dr1/fcjf0/sx1",
                                            "train/dr2/mdpk0/si1", "train/dr2/mdpk0/sx1"]
    assert [s.name for s in data.valid] == ["test/dr1/faks0/sx2"]  # RIFF file, SA dropped
    assert [s.name for s in data.test] == ["test/dr1/mdab0/si3"]
    assert data.classes == timit.TIMIT_PHONES and data.n_outputs == 61 and data.input_dim == 39
    assert data.bidirectional and data.task == "framewise"
    for s in data.train + data.valid + data.test:
        assert s.x.dtype == np.float32 and s.x.shape == (speech_features.n_frames(sum(n for _, n in SAY), speech_features.FeatureSettings()), 39)
        assert s.y.dtype == np.int64 and s.y.shape == (len(s.x),)
    assert data.classes[data.test[0].y[0]] == "h#" and data.classes[data.train[0].y[0]] == "iy"  # si1 starts at SAY[2]
    assert data.info["utterances"] == {"train": 4, "valid": 1, "test": 1}
    assert data.info["speakers"] == {"train": 2, "valid": 1, "test": 1}
    assert set(data.summary()) >= {"train", "valid", "test", "input_dim", "n_outputs", "feature_cache"}


def test_reader_lower_case_tree_and_sa(tmp_path):
    root = tmp_path / "timit"
    write_utterance(root, "train", "dr1", "fcjf0", "sa1", SAY, upper=False)
    write_utterance(root, "train", "dr1", "fcjf0", "sx1", SAY, upper=False)
    write_utterance(root, "test", "dr1", "faks0", "sx2", SAY, upper=False)
    write_utterance(root, "test", "dr1", "mdab0", "sx3", SAY, upper=False)
    assert len(timit.read(config(root, tmp_path), root).train) == 1
    assert len(timit.read(config(root, tmp_path, include_sa=True), root).train) == 2


def test_speaker_lists():
    assert len(timit.DEVELOPMENT_SPEAKERS) == len(set(timit.DEVELOPMENT_SPEAKERS)) == 50
    assert len(timit.CORE_TEST_SPEAKERS) == len(set(timit.CORE_TEST_SPEAKERS)) == 24
    assert not set(timit.DEVELOPMENT_SPEAKERS) & set(timit.CORE_TEST_SPEAKERS)
    assert sum(s.startswith("f") for s in timit.CORE_TEST_SPEAKERS) == 8  # one woman a dialect region
    assert len(timit.TIMIT_PHONES) == len(set(timit.TIMIT_PHONES)) == 61


def test_test_halves_split_and_phones_from_data(tmp_path):
    root = tmp_path / "like"
    write_utterance(root, "train", "dr1", "mkal00", "sx1", [("pau", 3000), ("aa", 4000)])
    write_utterance(root, "train", "dr1", "mkal00", "sa1", [("pau", 3000), ("zz", 4000)])  # SA: dropped
    for dialect, speaker in (("dr2", "mawb01"), ("dr1", "fslt02"), ("dr1", "mrms03"), ("dr4", "mk1604")):
        write_utterance(root, "test", dialect, speaker, "sx9", [("pau", 3000), ("b", 2000), ("aa", 3000)])
    data = timit.read(config(root, tmp_path, split="test_halves", phones="from_data"), root)
    # sorted by (dialect, speaker): dr1/fslt02, dr1/mrms03, dr2/mawb01, dr4/mk1604 -> valid, test, valid, test
    assert [s.name for s in data.valid] == ["test/dr1/fslt02/sx9", "test/dr2/mawb01/sx9"]
    assert [s.name for s in data.test] == ["test/dr1/mrms03/sx9", "test/dr4/mk1604/sx9"]
    assert data.classes == ["aa", "b", "pau"] and data.n_outputs == 3  # a phone only in test still has its output


def test_config_files_compose_and_load(tmp_path):
    root = small_tree(tmp_path / "TIMIT")
    cfg = OmegaConf.load(CONF / "timit.yaml")
    assert (cfg.format, cfg.task, cfg.bidirectional, cfg.split, cfg.phones) == ("timit", "framewise", True, "halberstadt", "timit61")
    cfg.path, cfg.cache_dir = str(root), str(tmp_path / "cache")
    data = load_dataset(cfg)
    assert data.summary()["train"]["sequences"] == 4
    like = OmegaConf.load(CONF / "timit_like.yaml")
    assert like.generate._target_ == "harness.datasets.timit_like.generate"
    assert like.generate.out == like.path and (like.split, like.phones) == ("test_halves", "from_data")
    assert speech_features.FeatureSettings.from_config(like.features) == speech_features.FeatureSettings()


# ---------------------------------------------------------------- labels, normalisation

def test_majority_labels_hand_worked():
    settings = speech_features.FeatureSettings()  # window 400 samples, step 160
    segments = [(0, 300, 0), (300, 500, 1), (500, 1000, 2)]
    # frame 0 [0,400): 300 of phone 0, 100 of 1       -> 0
    # frame 1 [160,560): 140 of 0, 200 of 1, 60 of 2  -> 1
    # frame 2 [320,720): 180 of 1, 220 of 2           -> 2
    # frame 3 [480,880): 20 of 1, 380 of 2            -> 2
    # frame 4 [640,1040), audio ends at 1000: 360 of 2 -> 2
    assert speech_features.majority_labels(segments, 1000, settings).tolist() == [0, 1, 2, 2, 2]
    assert speech_features.majority_labels([(0, 200, 5), (200, 400, 7)], 400, settings).tolist() == [5]  # tie: earlier
    # a gap in the transcription (400..1200), 8 frames: frames 3 [480,880), 4 [640,1040) and 5 [800,1200)
    # touch no segment; their middles 680, 840, 1000 are nearest to segment middles 200, 1300, 1300
    gap = [(0, 400, 1), (1200, 1400, 2)]
    assert speech_features.majority_labels(gap, 1400, settings).tolist() == [1, 1, 1, 1, 2, 2, 2, 2]


def test_normalisation_uses_training_statistics(tmp_path):
    root = small_tree(tmp_path / "TIMIT")
    settings = speech_features.FeatureSettings()
    data = timit.read(config(root, tmp_path), root)
    train = np.concatenate([s.x for s in data.train]).astype(np.float64)
    np.testing.assert_allclose(train.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(train.std(axis=0), 1, atol=1e-4)
    raw_train = np.concatenate([speech_features.features(timit.read_audio(u.wav, RATE), settings)
                                for u in timit.find_utterances(root) if u.part == "train" and u.name != "sa1"])
    raw_valid = speech_features.features(timit.read_audio(next(root.glob("TEST/DR1/FAKS0/SX2.WAV")), RATE), settings)
    expected = (raw_valid - raw_train.mean(axis=0)) / raw_train.std(axis=0)
    np.testing.assert_allclose(data.valid[0].x, expected, rtol=1e-3, atol=1e-3)
    plain = timit.read(config(root, tmp_path, normalise=False), root)
    np.testing.assert_allclose(plain.valid[0].x, raw_valid, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- MFCC against the definitions

def reference_static(signal: np.ndarray, rate=16000, window=400, step=160, n_fft=512, n_filters=26,
                     n_cepstra=12, lifter=22, alpha=0.97) -> np.ndarray:
    """log E and c_1..c_12 frame by frame, from the textbook definitions."""
    emphasised = np.empty_like(signal)
    emphasised[0] = signal[0]
    for n in range(1, len(signal)):
        emphasised[n] = signal[n] - alpha * signal[n - 1]
    count = 1 + math.ceil((len(signal) - window) / step)
    hamming = np.array([0.54 - 0.46 * math.cos(2 * math.pi * n / (window - 1)) for n in range(window)])
    k = np.arange(n_fft // 2 + 1)[:, None]
    dft = np.exp(-2j * np.pi * k * np.arange(window)[None, :] / n_fft)  # (257, 400): zero padding to 512 implied

    def mel(hz):
        return 2595 * math.log10(1 + hz / 700)

    def hz(m):
        return 700 * (10 ** (m / 2595) - 1)

    edges = [math.floor((n_fft + 1) * hz(mel(rate / 2) * j / (n_filters + 1)) / rate) for j in range(n_filters + 2)]
    triangles = np.zeros((n_filters, n_fft // 2 + 1))
    for j in range(n_filters):
        left, centre, right = edges[j], edges[j + 1], edges[j + 2]
        for i in range(left, right):
            triangles[j, i] = min((i - left) / (centre - left), (right - i) / (right - centre))
    rows = []
    for t in range(count):
        frame = np.zeros(window)
        chunk = emphasised[t * step: t * step + window]
        frame[: len(chunk)] = chunk
        power = np.abs(dft @ (frame * hamming)) ** 2 / n_fft
        log_mel = np.log(triangles @ power)
        cepstra = [math.sqrt((1 if q == 0 else 2) / n_filters)
                   * sum(log_mel[m] * math.cos(math.pi * q * (2 * m + 1) / (2 * n_filters)) for m in range(n_filters))
                   for q in range(n_cepstra + 1)]
        lifted = [c * (1 + lifter / 2 * math.sin(math.pi * q / lifter)) for q, c in enumerate(cepstra)]
        rows.append([math.log(power.sum())] + lifted[1:])
    return np.array(rows)


def test_mfcc_matches_definition_on_a_tone():
    t = np.arange(int(0.12 * RATE)) / RATE
    tone = 0.5 * np.sin(2 * np.pi * 1000 * t) + 0.2 * np.sin(2 * np.pi * 2500 * t + 0.3)
    ours = speech_features.static_features(tone, speech_features.FeatureSettings())
    reference = reference_static(tone)
    assert ours.shape == reference.shape == (speech_features.n_frames(len(tone), speech_features.FeatureSettings()), 13)
    np.testing.assert_allclose(ours, reference, rtol=1e-6, atol=1e-6)


def test_derivatives_match_regression_formula():
    rng = np.random.default_rng(1)
    static = rng.standard_normal((9, 13))
    full = speech_features.derivatives(static, 2)
    for t in range(9):
        expected = sum(n * (static[min(t + n, 8)] - static[max(t - n, 0)]) for n in (1, 2)) / 10
        np.testing.assert_allclose(full[t], expected, atol=1e-12)
    settings = speech_features.FeatureSettings()
    tone = np.sin(2 * np.pi * 440 * np.arange(4000) / RATE)
    x = speech_features.features(tone, settings)
    assert x.shape == (speech_features.n_frames(4000, settings), 39) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, 13:26], speech_features.derivatives(x[:, :13].astype(np.float64), 2), atol=1e-4)


# ---------------------------------------------------------------- cache

def test_cache_hits_and_invalidation(tmp_path):
    root = small_tree(tmp_path / "TIMIT")
    first = timit.read(config(root, tmp_path), root)
    again = timit.read(config(root, tmp_path), root)
    assert not first.info["feature_cache_hit"] and again.info["feature_cache_hit"]
    assert first.info["feature_cache"] == again.info["feature_cache"] and Path(first.info["feature_cache"]).exists()
    np.testing.assert_array_equal(first.train[0].x, again.train[0].x)
    changed = timit.read(config(root, tmp_path, features={"preemphasis": 0.9}), root)
    assert not changed.info["feature_cache_hit"] and changed.info["feature_cache"] != first.info["feature_cache"]
    assert not np.allclose(changed.train[0].x, first.train[0].x)
    phn = root / "TRAIN/DR1/FCJF0/SX1.PHN"
    phn.write_text(phn.read_text().replace(" sh\n", " s\n"))
    edited = timit.read(config(root, tmp_path), root)
    assert not edited.info["feature_cache_hit"]
    assert "s" in {edited.classes[c] for c in edited.train[1].y} and "s" not in {first.classes[c] for c in first.train[1].y}
    # the class list and normalisation are applied after the cache
    assert timit.read(config(root, tmp_path, normalise=False), root).info["feature_cache_hit"]


# ---------------------------------------------------------------- errors

def test_not_a_timit_tree(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a TIMIT tree"):
        timit.read(config(tmp_path / "empty", tmp_path), tmp_path / "empty")
    with pytest.raises(UserError, match="not a directory"):
        timit.read(config(tmp_path / "nothing", tmp_path), tmp_path / "nothing")


def test_phn_past_audio(tmp_path):
    root = small_tree(tmp_path / "TIMIT")
    phn = root / "TRAIN/DR2/MDPK0/SX1.PHN"
    phn.write_text(phn.read_text() + "12000 99999 h#\n")
    with pytest.raises(UserError, match=r"SX1\.PHN, line 8: phone 'h#' ends at sample 99999, past the end of its audio"):
        timit.read(config(root, tmp_path), root)


def test_unreadable_wav_and_bad_phn(tmp_path):
    root = small_tree(tmp_path / "TIMIT")
    (root / "TRAIN/DR1/FCJF0/SI1.WAV").write_bytes(b"NIST_1A\n garbage, not audio" * 3)
    with pytest.raises(UserError, match=r"FCJF0/SI1\.WAV is not a readable SPHERE or WAV file"):
        timit.read(config(root, tmp_path), root)
    root = small_tree(tmp_path / "TIMIT2")
    (root / "TEST/DR1/MDAB0/SI3.PHN").write_text("0 100 h#\nzero 200 b\n")
    with pytest.raises(UserError, match=r"SI3\.PHN, line 2: expected 'start end phone'"):
        timit.read(config(root, tmp_path), root)
    root = small_tree(tmp_path / "TIMIT3")
    (root / "TEST/DR1/MDAB0/SI3.PHN").write_text("0 100 h#\n100 200 qq\n")
    with pytest.raises(UserError, match=r"SI3\.PHN has phone 'qq', which is not one of the 61 TIMIT phones"):
        timit.read(config(root, tmp_path), root)
    root = small_tree(tmp_path / "TIMIT4")
    (root / "TEST/DR1/MDAB0/SI3.PHN").unlink()
    with pytest.raises(UserError, match=r"SI3\.WAV has no \.PHN file"):
        timit.read(config(root, tmp_path), root)


def test_config_errors(tmp_path):
    root = small_tree(tmp_path / "TIMIT")
    with pytest.raises(UserError, match="split: 'random' is unknown"):
        timit.read(config(root, tmp_path, split="random"), root)
    with pytest.raises(UserError, match="phones: 'ipa' is unknown"):
        timit.read(config(root, tmp_path, phones="ipa"), root)
    with pytest.raises(UserError, match="features.hop is unknown"):
        timit.read(config(root, tmp_path, features={"hop": 5}), root)
    like = tmp_path / "like"
    write_utterance(like, "train", "dr1", "mkal00", "sx1", SAY)
    write_utterance(like, "test", "dr1", "mkal01", "sx1", SAY)
    with pytest.raises(UserError, match="use split: test_halves"):
        timit.read(config(like, tmp_path), like)


# ---------------------------------------------------------------- timit_like without flite

def test_flite_phone_times_become_segments():
    printed = "pau:0.220 sh:0.367 iy:0.510 pau:0.700\n"
    assert timit_like.phone_segments(printed, 10000) == [(0, 3520, "pau"), (3520, 5872, "sh"), (5872, 8160, "iy"),
                                                         (8160, 10000, "pau")]  # clipped to the audio
    assert timit_like.phone_segments(printed, 12000)[-1] == (8160, 12000, "pau")  # stretched to the end


def test_plan_is_deterministic_and_keeps_test_apart(tmp_path):
    sentences = timit_like.read_sentences()
    assert len(sentences) >= 200
    args = dict(seed=3, train_speakers=10, test_speakers=6, sentences_per_speaker=8, dialect_sentences=2,
                voices=list(timit_like.VOICES), stretch=(0.8, 1.3), pitch=(0.75, 1.35), sentences=sentences)
    jobs = timit_like.plan(tmp_path, **args)
    assert jobs == timit_like.plan(tmp_path, **args)
    assert jobs != timit_like.plan(tmp_path, **{**args, "seed": 4})
    assert len(jobs) == 16 * 10

    def speakers_and_texts(part):
        mine = [j for j in jobs if f"/{part}/" in j["wav"] and not Path(j["wav"]).name.startswith("SA")]
        return {Path(j["wav"]).parent.name for j in mine}, {j["text"] for j in mine}, {(j["voice"], j["stretch"], j["pitch"]) for j in mine}

    train, test = speakers_and_texts("TRAIN"), speakers_and_texts("TEST")
    assert not train[0] & test[0] and not train[1] & test[1] and not train[2] & test[2]
    assert len(train[2]) == 10 and len(test[2]) == 6


# ---------------------------------------------------------------- slow: flite end to end

@pytest.mark.slow
def test_generate_small_corpus_and_read_it(tmp_path):
    if shutil.which("flite") is None:
        pytest.skip("flite is not installed (Debian/Ubuntu: apt-get install flite); timit_like needs it")
    args = dict(seed=0, train_speakers=5, test_speakers=4, sentences_per_speaker=2, dialect_sentences=1)
    out = timit_like.generate(str(tmp_path / "like"), **args)
    wavs = sorted(out.rglob("*.WAV"))
    assert len(wavs) == 9 * 3
    assert all(soundfile.info(str(w)).samplerate == RATE and soundfile.info(str(w)).format == "NIST" for w in wavs)
    stamps = {w: w.stat().st_mtime_ns for w in wavs}
    timit_like.generate(str(tmp_path / "like"), **args)  # a rerun skips what is there
    assert {w: w.stat().st_mtime_ns for w in wavs} == stamps
    with pytest.raises(UserError, match="other settings"):
        timit_like.generate(str(tmp_path / "like"), **{**args, "seed": 1})
    twin = timit_like.generate(str(tmp_path / "twin"), **args)
    assert [p.read_text() for p in sorted(twin.rglob("*.PHN"))] == [p.read_text() for p in sorted(out.rglob("*.PHN"))]
    assert json.loads((out / "generate.json").read_text())["seed"] == 0

    cfg = OmegaConf.load(CONF / "timit_like.yaml")
    cfg.path, cfg.cache_dir = str(out), str(tmp_path / "cache")
    data = load_dataset(cfg)
    assert (len(data.train), len(data.valid), len(data.test)) == (10, 4, 4)
    assert data.n_outputs == len(data.classes) > 20 and "pau" in data.classes
    assert data.info["speakers"] == {"train": 5, "valid": 2, "test": 2}
    labels = np.concatenate([s.y for s in data.train])
    assert labels.min() >= 0 and labels.max() < data.n_outputs
