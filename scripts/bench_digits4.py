"""digits4 timings: log-mel features per second, MiniLM sentences per second (uncached and cached), and the training
step of a config with the share of it spent on the audio features.

    PYTHONPATH=. python scripts/bench_digits4.py --config configs/digits4_quick.yaml --threads 2

Prints one JSON object (and the 1-minute load average before and after, since the machines are shared).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch


def timed(fn, repeats: int) -> float:
    """Median seconds of `fn()` over `repeats` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="configs/digits4_quick.yaml")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=30)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()[0]
    from mmvae.config import load_config
    from mmvae.data.registry import build_sources
    from mmvae.families import build_model
    from mmvae.losses import compute_loss

    cfg = load_config(args.config)
    model = build_model(cfg.model)
    train, _ = build_sources(cfg)
    bs = cfg.train.batch_size
    gen = torch.Generator().manual_seed(0)
    batches = [train.gather(torch.randint(0, len(train), (bs,), generator=gen)) for _ in range(args.steps)]
    out: dict = {"config": args.config, "threads": args.threads, "batch_size": bs}
    audio = model.modalities["audio"]
    b0 = batches[0]
    t_audio = timed(lambda: audio.preprocess(b0["x"]["audio"], b0["mask"]["audio"]), 20)
    out["audio_logmel_per_s"] = bs / t_audio
    out["audio_logmel_ms_per_batch"] = 1000 * t_audio
    # Side by side, the power spectrum alone: ours (re² + im² of torch.stft) against torchaudio's MelSpectrogram.
    wave = b0["x"]["audio"].float() / 32768.0
    t_ours = timed(lambda: audio.features.mel_power(wave), 20)
    t_torchaudio = timed(lambda: audio.features.mel(wave), 20)
    out["mel_power_ms_ours"] = 1000 * t_ours
    out["mel_power_ms_torchaudio_melspectrogram"] = 1000 * t_torchaudio
    out["mel_power_speedup"] = t_torchaudio / t_ours
    text = model.modalities["text"]
    with torch.no_grad():
        t_text = timed(lambda: text._pooled(b0["x"]["text"], b0["mask"]["text"]), 3)
        text.encode_pooled(b0["x"]["text"], b0["mask"]["text"])  # fill the cache for these rows
        t_cached = timed(lambda: text.encode_pooled(b0["x"]["text"], b0["mask"]["text"]), 20)
    out["text_minilm_sentences_per_s"] = bs / t_text
    out["text_cached_sentences_per_s"] = bs / t_cached
    for b in batches:  # warm the sentence cache as training does in its first minute
        text.encode_pooled(b["x"]["text"], b["mask"]["text"])
    groups = model.param_groups(cfg.train)
    opt = torch.optim.AdamW([g["params"] for g in groups][0], lr=cfg.train.lr)
    model.train()

    def step(b):
        out_ = model(b)
        loss = compute_loss(model, out_, b, cfg.loss, step=10_000)
        opt.zero_grad(set_to_none=True)
        loss.total.backward()
        opt.step()

    step(batches[0])
    times = []
    for b in batches[1:]:
        t = time.perf_counter()
        step(b)
        times.append(time.perf_counter() - t)
    t_step = statistics.median(times)
    out["train_step_s"] = t_step
    out["train_tuples_per_s"] = bs / t_step
    out["audio_logmel_share_of_step"] = t_audio / t_step
    out["load_1min"] = [load0, os.getloadavg()[0]]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
