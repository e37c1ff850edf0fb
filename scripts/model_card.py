"""Write the model card of a trained refiner: how it was made and what it measures on held-out data.

    python scripts/model_card.py runs/mnist-30b.pt --name mnist-30b --log runs/mnist-30b.log.jsonl \
        --command "cloost train ..." --data ../shared/data/mnist -o models/mnist-30b.md

The figures (PSNR after every stage, usage entropy per stage, options used, beam search) are
measured here, on the test split of --data, with the same code `cloost evaluate` runs.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch

from cloostcodec import DEFAULT_BEAM, bitformat, modelfile
from cloostcodec.datasets import load_images, to_unit_float
from cloostcodec.train import evaluate


def training_facts(log_path: Path) -> dict:
    """Steps, wall time, last loss and the last held-out evaluation from a training log."""
    facts = {"steps": 0, "minutes": 0.0, "loss": None, "eval": None, "evals": []}
    for line in log_path.read_text().splitlines():
        entry = json.loads(line)
        if "loss" in entry:
            facts.update(steps=entry["step"], minutes=entry["elapsed"] / 60, loss=entry["loss"])
        if entry.get("eval"):
            facts["eval"] = entry
            facts["evals"].append(entry)
    return facts


def timed_evaluate(refiner, pixels, beam: int) -> tuple[dict, float]:
    """`evaluate`'s figures and how many digits per second it encoded."""
    start = time.perf_counter()
    result = evaluate(refiner, pixels, beam=beam)
    return result, len(pixels) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--name", required=True)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--command", required=True, help="The exact `cloost train` command.")
    parser.add_argument("--note", default="", help="How the run departed from that command, if it did.")
    parser.add_argument("--data", default="../shared/data/mnist")
    parser.add_argument("--beams", default="2,4,8,16")
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()

    loaded = modelfile.load_model_file(args.model)
    refiner, sha256 = loaded.refiner, loaded.sha256
    cfg = refiner.config
    images = load_images(args.data, "test").images
    pixels = torch.from_numpy(to_unit_float(images))
    torch.set_num_threads(1)
    greedy, encode_rate = timed_evaluate(refiner, pixels, beam=1)
    beams = {}  # width -> (PSNR, digits/s)
    for width in map(int, args.beams.split(",")):
        result, rate = timed_evaluate(refiner, pixels, beam=width)
        beams[width] = (result["psnr"], rate)
    facts = training_facts(args.log)
    settings = loaded.extra.get("settings", {})
    params = sum(p.numel() for p in refiner.parameters())

    rows = []
    for i, value in enumerate(greedy["psnr_per_stage"]):
        rows.append(f"| {i + 1} | {(i + 1) * cfg.bits_per_stage} | {value:.2f} | {greedy['entropy'][i]:.3f} | "
                    f"{greedy['entropy_frac'][i]:.1%} | {greedy['options_used'][i]}/{cfg.options} |")
    beam_rows = [f"| {w}{' (the default)' if w == DEFAULT_BEAM else ''} | {p:.2f} | {p - greedy['psnr']:+.2f} | "
                 f"{rate:,.0f} | {encode_rate / rate:.1f}x |" for w, (p, rate) in beams.items()]
    last = facts["eval"]
    curve = [f"| {e['step']:,} | {e['elapsed'] / 60:.0f} | {e['psnr']:.2f} | {min(e['entropy_frac']):.1%} |"
             for e in facts["evals"]]
    text = f"""# Model card: {args.name}

| | |
|---|---|
| file | `models/{args.name}.pt` |
| weights sha256 (content hash) | `{sha256}` |
| model id in .clst headers | `{bitformat.model_id_from_sha256(sha256).hex()}` |
| code | {cfg.stages} stages x {cfg.options} options = {cfg.code_bits} bits; .clst file {bitformat.file_size(cfg.stages, cfg.bits_per_stage)} bytes |
| input | {cfg.width}x{cfg.height}, {cfg.channels} channel(s), pixels normalised with mean {cfg.norm_mean:g}, std {cfg.norm_std:g} |
| refiner | `{cfg.arch}`, hidden {cfg.hidden}, {cfg.core_layers} core layers, {params:,} parameters |

## Training

    {args.command}
{chr(10) + args.note + chr(10) if args.note else ''}
- Data: the digits of `{args.data}/train-*` ({settings.get('holdout')} of them held out for the evaluations
  during training, never trained on), random shifts of up to {settings.get('shift', 0)} pixel(s).
- {facts['steps']:,} steps of batch {settings.get('batch_size')}, Adam lr {settings.get('lr')} with
  {settings.get('schedule')} decay, alpha {settings.get('alpha')}, in {facts['minutes']:.0f} minutes
  wall time, {settings.get('threads') or 'all'} CPU thread(s),
  on a 2-core x86-64 development machine,
  torch {torch.__version__}, Python {platform.python_version()}.
- Last training loss {facts['loss']}; last held-out evaluation ({settings.get('holdout')} training digits):
  {last['psnr'] if last else 'n/a'} dB.

Held-out PSNR during training (the {settings.get('holdout')} held-out training digits, all stages):

| step | minutes | PSNR dB | least usage entropy, of ln K |
|---|---|---|---|
{chr(10).join(curve)}

## Held-out quality: the {len(images):,} test digits of `{args.data}/t10k-*`

PSNR = 10 log10(1 / MSE), MSE over all pixels in [0, 1], reconstructions clipped to [0, 1];
greedy encoding; the PSNR after stage n is that of the code's first n indices (progressive
decoding). Usage entropy is that of the option chosen at each stage over the test digits
(ln {cfg.options} = {math.log(cfg.options):.3f} nats is uniform use).

| stage | bits | PSNR dB | entropy (nats) | of ln K | options used |
|---|---|---|---|---|---|
{chr(10).join(rows)}

Greedy encoding ran at {encode_rate:,.0f} digits/s on one thread while measuring every stage
(on a shared machine; `cloost bench` in BENCHMARKS.md measures speed properly).

Beam search encoding (same files, same decoder; `cloost compress` searches with a beam of
{DEFAULT_BEAM} unless given `--beam`):

| beam width | PSNR dB | gain over greedy | digits/s (one thread) | time, of greedy |
|---|---|---|---|---|
{chr(10).join(beam_rows)}

Reproduce: `cloost evaluate --data {args.data} --split test -m {args.name} --beam W` (W = 1 for the
greedy table above).
"""
    args.output.write_text(text)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
