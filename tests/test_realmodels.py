"""Real-model data helpers: inputs match each model's spec under the data layout, and the models behave on them."""

import numpy as np
import onnx
import pytest
import realmodels

pytestmark = pytest.mark.real

_DTYPES = {"tensor(float)": np.float32, "tensor(int32)": np.int32, "tensor(int64)": np.int64}


def _check_layout(data: dict, sess, n: int) -> None:
    """Every model input is present with its dtype, n samples, and a shape of the input's rank (batched)
    or rank + 1 (one feed per entry) agreeing with its fixed dims; the only other key allowed is labels."""
    inputs = sess.get_inputs()
    assert set(data) - {"labels"} == {i.name for i in inputs}
    for inp in inputs:
        arr, rank = data[inp.name], len(inp.shape)
        assert arr.dtype == _DTYPES[inp.type], inp.name
        assert arr.shape[0] == n and arr.ndim in (rank, rank + 1), (inp.name, arr.shape, inp.shape)
        dims = inp.shape if arr.ndim == rank + 1 else inp.shape[1:]
        for got, want in zip(arr.shape[1:], dims):
            assert not isinstance(want, int) or got == want, (inp.name, arr.shape, inp.shape)
    if "labels" in data:
        assert len(data["labels"]) == n


def _feed(data: dict, sess, i: int) -> dict:
    """Sample i as a model feed: entry i of a rank + 1 array, a length-1 batch slice otherwise."""
    return {inp.name: np.asarray(data[inp.name][i]) if data[inp.name].ndim == len(inp.shape) + 1
            else data[inp.name][i:i + 1] for inp in sess.get_inputs()}


@pytest.mark.parametrize("key", realmodels.MODEL_KEYS)
def test_model_path_is_packaged_onnx(key):
    model = onnx.load(str(realmodels.model_path(key)), load_external_data=False)
    assert len(model.graph.input) and len(model.graph.output)


def test_magika_matches_magika_identify():
    from magika import Magika

    n, sess = 100, realmodels.session("magika")
    data, files = realmodels.magika_data(n), realmodels.magika_files(n)
    _check_layout(data, sess, n)
    assert len(files) == n and files == sorted(files)
    names = realmodels.magika_label_names()
    ours = [names[i] for i in sess.run(None, data)[0].argmax(1)]
    theirs = [str(r.prediction.dl.label) for r in Magika().identify_paths(files)]
    rate = np.mean([a == b for a, b in zip(ours, theirs)])
    print(f"magika: model argmax agrees with Magika().identify_paths on {rate:.0%} of {n} files "
          f"({len(set(ours))} distinct types)")
    assert rate >= 0.9


def test_ddddocr_reads_rendered_text():
    n, sess = 40, realmodels.session("ddddocr_common")
    data = realmodels.ddddocr_data(n)
    _check_layout(data, sess, n)
    texts = realmodels.ddddocr_texts(n)
    read = [realmodels.ddddocr_decode(sess.run(None, _feed(data, sess, i))[0]) for i in range(n)]
    rate = np.mean([a == b for a, b in zip(read, texts)])
    print(f"ddddocr: {rate:.0%} of {n} rendered strings read exactly")
    assert rate >= 0.5


def _speech_gap(probs: np.ndarray, labels: np.ndarray, name: str) -> float:
    """Mean speech probability on speech chunks minus that on silence chunks (printed)."""
    speech, silence = probs[labels == 1].mean(), probs[labels == 0].mean()
    print(f"{name}: mean speech probability {speech:.2f} on speech chunks, {silence:.2f} on silence")
    return speech - silence


def test_silero_vad_separates_speech_from_silence():
    n, sess = 200, realmodels.session("silero_vad")
    data = realmodels.silero_data(n)
    _check_layout(data, sess, n)
    assert 0 < data["labels"].mean() < 1
    probs = np.array([sess.run(None, _feed(data, sess, i))[0].item() for i in range(n)])
    assert _speech_gap(probs, data["labels"], "silero_vad") > 0.5


def test_silero_sequence_separates_speech_from_silence():
    n, sess = 20, realmodels.session("silero_vad_16k_sequence")
    data = realmodels.silero_sequence_data(n)
    _check_layout(data, sess, n)
    probs = np.stack([sess.run(None, _feed(data, sess, i))[0] for i in range(n)])
    assert probs.shape == data["labels"].shape
    assert _speech_gap(probs, data["labels"], "silero_vad_16k_sequence") > 0.5


def test_silero_skips_without_espeak(monkeypatch):
    monkeypatch.setattr(realmodels.shutil, "which", lambda _: None)
    with pytest.raises(pytest.skip.Exception, match="espeak-ng"):
        realmodels._espeak()


@pytest.mark.parametrize("key", ["minilm_l3", "minilm_l6_int8"])
def test_minilm_embeds_each_sentence_closest_to_its_paraphrase(key):
    n, sess = 24, realmodels.session(key)
    data = realmodels.minilm_data(key, n)
    _check_layout(data, sess, n)
    assert (data["input_ids"][:, 0] == 101).all() and data["attention_mask"].sum(1).max() < 64  # [CLS], no cut
    feed = {i.name: data[i.name] for i in sess.get_inputs()}
    outputs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed)))
    emb = realmodels.minilm_embeddings(key, outputs, data["attention_mask"])
    sim = emb @ emb.T
    np.fill_diagonal(sim, -np.inf)
    rate = np.mean(data["labels"][sim.argmax(1)] == data["labels"])
    pair = sim[np.arange(n), np.arange(n) ^ 1]
    other = np.where(data["labels"][:, None] != data["labels"][None], sim, np.nan)
    print(f"{key}: nearest sentence is the paraphrase for {rate:.0%} of {n}; mean cosine {pair.mean():.2f} to the "
          f"paraphrase, {np.nanmean(other):.2f} to the others")
    assert rate >= 0.9
