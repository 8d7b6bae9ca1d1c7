"""timit_like: a stand-in for TIMIT synthesised with flite, in TIMIT's layout.

`generate(out, seed)` writes

    out/TRAIN/DR<d>/<SPEAKER>/SA1.WAV, SA2.WAV, SX<n>.WAV ...   NIST SPHERE, 16 kHz, 16 bit
    out/.../<UTTERANCE>.PHN                                      start end phone (samples)
    out/.../<UTTERANCE>.TXT                                      the sentence
    out/TEST/...                                                 the same, other speakers
    out/generate.json                                            the settings that made it

which harness.datasets.timit reads with `split: test_halves` and `phones: from_data`
(conf/dataset/timit_like.yaml). A speaker is a flite voice (kal and kal16, the diphone
voice at 8 kHz and 16 kHz, and the clustergen voices awb, rms, slt) with its own speaking
rate (flite's duration_stretch) and pitch (a factor: f0_shift for the clustergen voices,
int_f0_target_mean for the diphone voices), both drawn at random per speaker, so no two
speakers sound the same and the validation and test speakers never occur in training.
Speakers are spread over the eight DR folders in turn.

Sentences come from timit_like_sentences.txt, shuffled by the seed: the first two are the
dialect sentences SA1 and SA2 that every speaker says (the reader drops them, as
Halberstadt's split does); of the rest, a fifth is read only by TEST speakers and the
other four fifths only by TRAIN speakers; each speaker reads `sentences_per_speaker`
different ones, named SX<line number> so that a text has one name across speakers.

The .PHN times are flite's segment end times (`flite -psdur`), in samples at 16 kHz; the
8 kHz voice is resampled to 16 kHz. flite's last end time can run a few milliseconds past
the audio, so segments are clipped to it, and the last one is stretched to the end.

The same seed gives the same corpus. A rerun skips utterances already written, so an
interrupted run can be resumed; a rerun with other settings into the same folder is refused.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from math import gcd
from pathlib import Path

import numpy as np
import soundfile
from scipy.signal import resample_poly

from harness.datasets import resolve_path
from harness.errors import UserError

SENTENCES = Path(__file__).with_name("timit_like_sentences.txt")
SAMPLE_RATE = 16000
# voice: (sex letter of the speaker names, pitch control it obeys)
VOICES = {
    "kal": ("m", "int_f0_target_mean"),
    "kal16": ("m", "int_f0_target_mean"),
    "awb": ("m", "f0_shift"),
    "rms": ("m", "f0_shift"),
    "slt": ("f", "f0_shift"),
}
DIPHONE_MEAN_F0 = 100.0  # Hz: int_f0_target_mean of kal at pitch factor 1


def read_sentences(path: Path = SENTENCES) -> list[str]:
    """The sentences of a text file, one a line, without blank and '#' lines."""
    lines = [line.strip() for line in Path(path).read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def flite_command(flite: str, voice: str, stretch: float, pitch: float, text: str, wav: Path) -> list[str]:
    """The flite call that says `text` as one speaker and prints the phone end times."""
    command = [flite, "-voice", voice, "-psdur", "--setf", f"duration_stretch={stretch:.3f}"]
    if VOICES[voice][1] == "f0_shift":
        command += ["--setf", f"f0_shift={pitch:.3f}"]
    else:
        command += ["--setf", f"int_f0_target_mean={DIPHONE_MEAN_F0 * pitch:.1f}"]
    return command + ["-t", text, "-o", str(wav)]


def phone_segments(printed: str, n_samples: int) -> list[tuple[int, int, str]]:
    """(start, end, phone) in samples from flite's `phone:end_seconds ...`, clipped to the audio."""
    segments, start = [], 0
    for token in printed.split():
        phone, _, end_seconds = token.rpartition(":")
        end = min(int(round(float(end_seconds) * SAMPLE_RATE)), n_samples)
        if end > start:
            segments.append((start, end, phone))
            start = end
    if not segments:
        raise RuntimeError(f"flite printed no phones: {printed!r}")
    last_start, _, last_phone = segments[-1]
    segments[-1] = (last_start, n_samples, last_phone)  # silence after the last end time joins the last phone
    return segments


def synthesise(job: dict, flite: str) -> None:
    """Write one utterance's .WAV, .PHN and .TXT (the .PHN last, so its presence means done)."""
    wav, phn = Path(job["wav"]), Path(job["phn"])
    raw = wav.with_name(wav.stem + ".flite.wav")
    done = subprocess.run(flite_command(flite, job["voice"], job["stretch"], job["pitch"], job["text"], raw),
                          capture_output=True, text=True)
    if done.returncode != 0 or not raw.exists():
        raise RuntimeError(f"flite failed on {wav}: {done.stderr.strip()}")
    signal, rate = soundfile.read(str(raw), dtype="float64")
    raw.unlink()
    if rate != SAMPLE_RATE:
        common = gcd(SAMPLE_RATE, rate)
        signal = resample_poly(signal, SAMPLE_RATE // common, rate // common)
    signal = np.clip(signal, -1.0, 1.0)
    segments = phone_segments(done.stdout, len(signal))
    soundfile.write(str(wav), signal, SAMPLE_RATE, format="NIST", subtype="PCM_16")
    Path(job["txt"]).write_text(f"0 {len(signal)} {job['text']}\n")
    partial = phn.with_name(phn.name + ".partial")
    partial.write_text("".join(f"{s} {e} {p}\n" for s, e, p in segments))
    partial.replace(phn)


def plan(out: Path, seed: int, train_speakers: int, test_speakers: int, sentences_per_speaker: int,
         dialect_sentences: int, voices: list[str], stretch: tuple[float, float], pitch: tuple[float, float],
         sentences: list[str]) -> list[dict]:
    """Every utterance to make: who says what, and where it goes. Depends only on the arguments."""
    rng = np.random.default_rng(seed)
    numbered = list(enumerate(sentences, start=1))
    order = rng.permutation(len(numbered))
    numbered = [numbered[i] for i in order]
    dialect, rest = numbered[:dialect_sentences], numbered[dialect_sentences:]
    n_test_texts = max(sentences_per_speaker, len(rest) // 5)
    pools = {"TEST": rest[:n_test_texts], "TRAIN": rest[n_test_texts:]}
    if len(pools["TRAIN"]) < sentences_per_speaker:
        raise UserError(f"timit_like: too few sentences ({len(sentences)}) for {sentences_per_speaker} a speaker; "
                        "add sentences or lower sentences_per_speaker.")
    jobs, number = [], 0  # number: the speaker's place in the whole corpus, so names never repeat
    for part, count in (("TRAIN", train_speakers), ("TEST", test_speakers)):
        for index in range(count):
            voice = voices[index % len(voices)]
            speaker_stretch = float(rng.uniform(*stretch))
            speaker_pitch = float(rng.uniform(*pitch))
            speaker = f"{VOICES[voice][0]}{voice[:1]}{voice[-2:]}{number:03d}".upper()  # e.g. MKAL003, FSLT089
            number += 1
            folder = out / part / f"DR{1 + index % 8}" / speaker
            chosen = rng.choice(len(pools[part]), size=sentences_per_speaker, replace=False)
            texts = [(f"SA{i + 1}", text) for i, (_, text) in enumerate(dialect)]
            texts += [(f"SX{pools[part][i][0]}", pools[part][i][1]) for i in sorted(chosen)]
            for name, text in texts:
                jobs.append({"wav": str(folder / f"{name}.WAV"), "phn": str(folder / f"{name}.PHN"),
                             "txt": str(folder / f"{name}.TXT"), "voice": voice, "text": text,
                             "stretch": round(speaker_stretch, 3), "pitch": round(speaker_pitch, 3)})
    return jobs


def generate(out: str = "datasets/timit_like", seed: int = 0, train_speakers: int = 84, test_speakers: int = 24,
             sentences_per_speaker: int = 8, dialect_sentences: int = 2,
             voices: list[str] | tuple[str, ...] = ("kal", "kal16", "awb", "rms", "slt"),
             stretch: tuple[float, float] = (0.8, 1.3), pitch: tuple[float, float] = (0.75, 1.35),
             sentences: str | None = None, workers: int = 2, flite: str = "flite") -> Path:
    """Synthesise the timit_like corpus under `out` (relative paths from the project root); returns its path.

    Defaults: 84 TRAIN speakers x 8 sentences = 672 training utterances (plus SA1, SA2), 24
    TEST speakers (12 validation, 12 test under `split: test_halves`, 96 utterances each).
    `stretch` and `pitch` are the ranges the speakers' rate and pitch factors are drawn from;
    `sentences` is a text file (default: the project's timit_like_sentences.txt); `workers`
    flite processes run at once.
    """
    voices = [str(v) for v in voices]
    unknown = [v for v in voices if v not in VOICES]
    if unknown:
        raise UserError(f"timit_like: voice '{unknown[0]}' is not supported; use some of {', '.join(VOICES)}.")
    flite_path = shutil.which(flite)
    if flite_path is None:
        raise UserError(f"timit_like needs flite, and '{flite}' is not on PATH; install it (Debian/Ubuntu: "
                        "sudo apt-get install flite; macOS: brew install flite).")
    out_path = resolve_path(out)
    settings = {"seed": int(seed), "train_speakers": int(train_speakers), "test_speakers": int(test_speakers),
                "sentences_per_speaker": int(sentences_per_speaker), "dialect_sentences": int(dialect_sentences),
                "voices": voices, "stretch": [float(v) for v in stretch], "pitch": [float(v) for v in pitch],
                "sentences": str(sentences) if sentences else "timit_like_sentences.txt"}
    record = out_path / "generate.json"
    if record.exists() and json.loads(record.read_text()) != settings:
        raise UserError(f"{out_path} was generated with other settings (see {record}); delete the folder or "
                        "generate into another one.")
    jobs = plan(out_path, int(seed), int(train_speakers), int(test_speakers), int(sentences_per_speaker),
                int(dialect_sentences), voices, tuple(stretch), tuple(pitch),
                read_sentences(Path(sentences) if sentences else SENTENCES))
    out_path.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(settings, indent=1) + "\n")
    todo = [job for job in jobs if not Path(job["phn"]).exists()]
    print(f"timit_like: {len(jobs)} utterances in {out_path}, {len(jobs) - len(todo)} already there, "
          f"{len(todo)} to synthesise", file=sys.stderr, flush=True)
    for job in todo:
        Path(job["wav"]).parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    report_every = max(1, len(todo) // 20)
    with ThreadPoolExecutor(max_workers=max(1, int(workers))) as pool:
        for count, _ in enumerate(pool.map(lambda job: synthesise(job, flite_path), todo), start=1):
            if count % report_every == 0 or count == len(todo):
                elapsed = time.time() - started
                print(f"timit_like: {count}/{len(todo)} utterances ({elapsed:.0f} s, "
                      f"about {elapsed / count * (len(todo) - count):.0f} s to go)", file=sys.stderr, flush=True)
    return out_path
