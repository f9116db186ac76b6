"""The audio and text modality kinds: masked likelihoods, zero gradient for padded and absent parts, the offline
text encoder, the inverse mel, the grammar, and bad-input errors of the FSDD reader."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from data_prep import fsdd, sentences
from data_prep.errors import DataError
from mmvae.config import ConfigError, ModalityConfig
from mmvae.modalities import build_modality
from tests.digits4_fixtures import tone, wav_bytes, write_tar


@pytest.fixture(scope="module")
def vocab_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("vocab") / "text_vocab.json"
    path.write_text(json.dumps(sentences.VOCAB))
    return str(path)


def audio(decoder_in: int | None = 8, length: int = 1024, **opts) -> torch.nn.Module:
    cfg = ModalityConfig(kind="audio", shape=[length], hidden=[16], likelihood="laplace",
                         options={"channels": [8, 8], "n_mels": 16, **opts})
    return build_modality("a", cfg, decoder_in)


def text(vocab_file: str, decoder_in: int | None = 8, **opts) -> torch.nn.Module:
    cfg = ModalityConfig(kind="text", shape=[16], hidden=[16], likelihood="categorical",
                         options={"vocab_file": vocab_file, "gru_hidden": 16, "embed_dim": 8, **opts})
    return build_modality("t", cfg, decoder_in)


# --- audio -------------------------------------------------------------------------------------------
def test_audio_shapes_and_frame_mask():
    mod = audio()
    x = torch.from_numpy(np.stack([tone(3, 0, 1024), tone(5, 1, 1024)]))
    mask = torch.arange(1024)[None] < torch.tensor([[1024], [300]])
    feats = mod.preprocess(x, mask)
    assert feats.shape == (2, 16, 8) == (2, *mod.model_shape) and mod.parts_shape == (8,)
    frames = mod.frame_mask(mask)
    assert frames[0].all() and frames[1].tolist() == [True, True, True, False, False, False, False, False]  # 0,128,256 < 300
    assert (feats[1][:, ~frames[1]] == 0).all() and feats[0].max() > 0.5


def test_mel_power_matches_torchaudio():
    """The power path (re² + im², no square root) gives torchaudio's MelSpectrogram(power=2) to float rounding."""
    torch.manual_seed(0)
    mod = audio(length=2048)
    wave = torch.randn(3, 2048) * 0.3
    ours, theirs = mod.features.mel_power(wave), mod.features.mel(wave)
    assert ours.shape == theirs.shape == (3, 16, 17)
    assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(ours, mod.features.mel(wave * 0.5), rtol=1e-3)  # a different wave differs


def test_audio_likelihood_ignores_padded_frames_and_their_gradient():
    torch.manual_seed(0)
    mod = audio()
    x = torch.from_numpy(np.stack([tone(2, 0, 1024)] * 2))
    mask = torch.arange(1024)[None] < torch.tensor([[1024], [400]])
    feats = mod.preprocess(x, mask)
    params = torch.rand(2, *mod.model_shape, requires_grad=True)
    lp = mod.log_prob(params, feats, mask)
    lp.sum().backward()
    real = mod.frame_mask(mask)
    assert (params.grad[1][:, ~real[1]] == 0).all() and (params.grad[1][:, real[1]] != 0).any()
    # The padded frames' values do not change the score.
    other = params.detach().clone()
    other[1][:, ~real[1]] = 0.123
    assert torch.allclose(mod.log_prob(other, feats, mask), lp.detach())


def test_a_tone_survives_log_mel_and_its_inverse():
    """A 1 kHz tone -> log-mel -> InverseMelScale + GriffinLim: the dominant frequency is within 2 %, the re-analysed
    log-mel peaks in the same mel bin and, on the bins that carry the tone (original > 0.5), lies within 0.08
    (mean absolute, on the [0, 1] feature scale) of the original. (Griffin-Lim's phase errors raise the quiet bins:
    over all bins the mean difference is about 0.17, measured.)"""
    sr, n = 8000, 8192
    t = np.arange(n) / sr
    wave = torch.from_numpy((0.5 * np.sin(2 * np.pi * 1000 * t) * 32767).astype(np.int16))[None]
    mod = audio(length=n, n_mels=64, griffin_lim_iters=32)
    feats = mod.preprocess(wave)
    back = mod.to_waveform(feats)[0].numpy()
    spectrum = np.abs(np.fft.rfft(back * np.hanning(len(back))))
    peak = np.fft.rfftfreq(len(back), 1 / sr)[spectrum.argmax()]
    assert abs(peak - 1000) / 1000 < 0.02
    again = mod.preprocess(torch.from_numpy((back / np.abs(back).max() * 0.5 * 32767).astype(np.int16))[None])
    inner, inner_again = feats[..., 2:-2], again[..., 2:-2]  # the edge frames lack a full window
    assert inner.mean(-1).argmax() == inner_again.mean(-1).argmax()
    strong = inner > 0.5
    assert float((inner_again - inner).abs()[strong].mean()) < 0.08


def test_audio_options_are_checked():
    with pytest.raises(ConfigError, match="frames"):
        audio(length=1000)  # 7 frames: not a multiple of 4
    with pytest.raises(ConfigError, match="unknown option 'mels'"):
        audio(mels=3)


# --- text ----------------------------------------------------------------------------------------------
def batch_tokens(n: int = 4, seed: int = 0):
    texts, _ = sentences.write_sentences(np.arange(n) % 10, seed)
    ids = torch.from_numpy(sentences.encode_sentences(texts, 16))
    return ids, ids != 0, texts


def test_offline_text_encoder_mean_pools_minilm(vocab_file):
    from transformers import AutoModel, AutoTokenizer

    mod = text(vocab_file)
    ids, mask, texts = batch_tokens()
    pooled = mod.encode_pooled(ids, mask)
    path = mod.model_path
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    ref_model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = ref_model(**enc).last_hidden_state
    w = enc["attention_mask"].unsqueeze(-1).float()
    ref = (h * w).sum(1) / w.sum(1)
    assert torch.allclose(pooled, ref, atol=1e-4)
    # Frozen: nothing of MiniLM is a parameter or in the state dict; a second call hits the cache.
    assert not any("minilm" in k for k in mod.state_dict()) and len(mod._cache) == len(set(texts))
    assert torch.equal(mod.encode_pooled(ids, mask), pooled)


def test_fine_tuned_encoder_gets_its_own_param_group(vocab_file):
    mod = text(vocab_file, encoder_lr_scale=0.1)
    groups = mod.param_groups()
    assert len(groups) == 1 and groups[0]["lr_scale"] == 0.1
    assert len(groups[0]["params"]) == len(list(mod.minilm.parameters()))
    ids, mask, _ = batch_tokens(2)
    mod.encode(ids, mask).h.sum().backward()
    assert mod.minilm.embeddings.word_embeddings.weight.grad is not None


def test_tokenizer_that_cannot_be_loaded_offline(vocab_file, tmp_path):
    empty = tmp_path / "no_model"
    empty.mkdir()
    with pytest.raises(ConfigError, match=f"{empty}.*offline"):
        text(vocab_file, model_path=str(empty))
    with pytest.raises(ConfigError, match="does not exist"):
        text(str(tmp_path / "missing.json"))


def test_text_likelihood_masked_and_padded_tokens_get_no_gradient(vocab_file):
    torch.manual_seed(0)
    mod = text(vocab_file)
    ids, mask, _ = batch_tokens(3)
    c = torch.randn(3, 8, requires_grad=True)
    params = mod.decode(c)
    assert params.shape == (3, 16 + math.ceil(8 / len(sentences.VOCAB)), len(sentences.VOCAB))
    lp = mod.log_prob_elements(params, ids)
    assert (lp[~mask] == 0).all() and (lp[mask] < 0).all()
    # The score of sample 0 does not depend on sample 1's conditioning; a wrong token after <eos> changes nothing.
    lp_total = mod.log_prob(params, ids, mask)
    g = torch.autograd.grad(lp_total[0], c)[0]
    assert (g[1:] == 0).all() and (g[0] != 0).any()
    other = ids.clone()
    other[~mask] = 5
    assert torch.allclose(mod.log_prob(params, other, mask), lp_total)
    mod.eval()
    generated = mod.mean(mod.decode(c.detach()))
    assert generated.shape == (3, 16) and len(mod.detokenize(generated)) == 3


def test_absent_text_gets_zero_gradient_through_the_model(vocab_file, tmp_path):
    from mmvae.config import config_from_dict
    from mmvae.families import build_model
    from mmvae.losses import compute_loss
    from tests.conftest import tiny_tree

    tree = tiny_tree(tmp_path)
    tree["model"]["modalities"]["text"] = {"kind": "text", "shape": [16], "hidden": [16], "private_dim": 2,
                                           "private_feature_dim": 8, "likelihood": "categorical",
                                           "options": {"vocab_file": vocab_file, "gru_hidden": 16, "embed_dim": 8}}
    del tree["model"]["modalities"]["wave"]
    cfg = config_from_dict(tree)
    model = build_model(cfg.model)
    ids, mask, _ = batch_tokens(4)
    present = torch.tensor([True, True, False, False])
    batch = {"x": {"bars": torch.zeros(4, 1, 16, 16, dtype=torch.uint8), "text": ids},
             "present": {"bars": torch.ones(4, dtype=torch.bool), "text": present}, "mask": {"text": mask},
             "y": torch.arange(4)}
    out = model(batch)
    loss = compute_loss(model, out, batch, cfg.loss, step=0)
    grad = torch.autograd.grad(loss.terms["recon/text"], out.params["text"])[0]
    assert (grad[~present] == 0).all() and (grad[present] != 0).any()


# --- the grammar --------------------------------------------------------------------------------------------
def test_grammar_is_deterministic_and_style_is_independent_of_the_digit():
    labels = np.arange(3000) % 10
    a, sa = sentences.write_sentences(labels, seed=5)
    b, sb = sentences.write_sentences(labels, seed=5)
    c, _ = sentences.write_sentences(labels, seed=6)
    assert a == b and (sa == sb).all() and a != c
    assert sentences.grammar_record(5)["sha256"] == sentences.grammar_record(5)["sha256"]
    assert max(len(s.split()) for s in a) + 1 <= sentences.max_sentence_tokens() <= 16
    forms = {f: np.bincount(labels[sa[:, 1] == f], minlength=10) for f in range(3)}
    for counts in forms.values():  # every number form occurs for every digit
        assert (counts > 0).all()
    ids = sentences.encode_sentences(a[:5], 16)
    assert [sentences.decode_tokens(r) for r in ids] == a[:5]
    with pytest.raises(DataError, match="more than the maximum of 4 tokens"):
        sentences.encode_sentences(["this is the digit seven"], 4)


# --- reading wavs --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("data, problem", [
    (wav_bytes(tone(1, 0), sr=16000), "sample rate 16000 Hz, expected 8000"),
    (wav_bytes(np.stack([tone(1, 0)] * 2, 1)), "2 channels, expected mono"),
    (wav_bytes(tone(1, 0).astype(np.float32) / 32768, subtype="FLOAT"), "sample format FLOAT"),
    (b"", "empty file"),
    (b"RIFF0000WAVEjunkjunkjunk", "not a decodable wav"),
    (wav_bytes(np.zeros(0, dtype=np.int16)), "no samples"),
])
def test_bad_wavs_inside_the_tar_are_named(tmp_path, data, problem):
    path = write_tar(tmp_path / "f.tar.gz", {"recordings/0_ann_0.wav": wav_bytes(tone(0, 0)), "recordings/3_ann_1.wav": data})
    with pytest.raises(DataError, match=problem) as err:
        fsdd.read_fsdd_tar(path)
    assert f"{path}:recordings/3_ann_1.wav" in str(err.value)


def test_bad_tarballs(tmp_path):
    with pytest.raises(DataError, match="not found"):
        fsdd.read_fsdd_tar(tmp_path / "missing.tar.gz")
    (tmp_path / "junk.tar.gz").write_bytes(b"\x1f\x8b\x08junk")
    with pytest.raises(DataError, match="not a readable tar"):
        fsdd.read_fsdd_tar(tmp_path / "junk.tar.gz")
    empty = write_tar(tmp_path / "empty.tar.gz", {})
    with pytest.raises(DataError, match="no recordings"):
        fsdd.read_fsdd_tar(empty)
    badname = write_tar(tmp_path / "name.tar.gz", {"recordings/seven.wav": wav_bytes(tone(7, 0))})
    with pytest.raises(DataError, match="seven.wav: is not named"):
        fsdd.read_fsdd_tar(badname)
    ok = fsdd.read_fsdd_tar(write_tar(tmp_path / "ok.tar", {f"recordings/{d}_ann_{k}.wav": wav_bytes(tone(d, k))
                                                            for d in range(2) for k in range(7)}, gz=False))
    test, train = ok.split_index("test"), ok.split_index("train")
    assert set(ok.takes[test]) == set(range(5)) and set(ok.takes[train]) == {5, 6}
