"""How much DCD's per-sample weights can vary on a teacher's real lists, before any student trains.

    python benchmarks/weight_ess.py --teacher-cache results/demo_scenes/teacher_scores/<key> [--batch 64]
        [--name weight_ess_scenes] [--results benchmarks/results]

Reads the teacher logits (A, K) of every round file of one teacher-score cache folder (the lists the students
train on; positive at column 0), shuffles the anchors once (seed 0), cuts them into batches of ``--batch`` and, for
each setting below, computes per batch the label weights w and the distillation weights r of
:mod:`dcd_itr.distill.weighting` from the teacher entropies H_i at the weight temperature T_w, then reports the
mean effective sample size 1/Σw² (B = uniform, 1 = one sample holds everything), the mean and spread of H, and
the share of lists whose teacher ranks the positive first. Settings: the teacher's logits raw or z-scored per
list (``teacher_norm``), T_w ∈ ``--weight-temperatures``, DCD's weights (entropy label weights, the paper's
distillation weights) and the beyond-paper weightings the ablation sweeps (tempered γ = 0.5, mixed 0.5,
confidence κ = 4). Writes RESULTS/NAME.md and NAME.json.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
from safetensors import SafetensorError

from dcd_itr.distill.losses import teacher_entropy
from dcd_itr.distill.normalise import TEACHER_NORMS, normalise_teacher
from dcd_itr.distill.weighting import distill_weights, effective_sample_size, label_weights
from dcd_itr.errors import CorruptFileError
from dcd_itr.io_utils import load_checked, write_json_atomic, write_text_atomic

WEIGHTINGS = {  # name: (label weighting, distillation weighting, gamma, mix, kappa)
    "dcd (entropy / paper)": ("entropy", "paper", 0.5, 0.5, 1.0),
    "tempered γ 0.5 / paper": ("tempered", "paper", 0.5, 0.5, 1.0),
    "mixed 0.5 / paper": ("mixed", "paper", 0.5, 0.5, 1.0),
    "uniform / confidence κ 4": ("uniform", "confidence", 0.5, 0.5, 4.0),
}


def round_logits(path: Path) -> torch.Tensor:
    """The teacher logits (A, K) of one round file; :class:`CorruptFileError` naming it if it cannot be read."""
    try:
        return load_checked(path)[0]["teacher_logits"]
    except (SafetensorError, OSError, KeyError, ValueError) as error:
        raise CorruptFileError(path, f"cannot read teacher logits from this round file ({error!r})") from None


def batch_ess(entropy: torch.Tensor, batch: int, scheme: tuple) -> tuple[float, float]:
    """Mean label ESS and distillation ESS over consecutive batches of ``entropy`` (A,) (a trailing part dropped)."""
    label_scheme, distill_scheme, gamma, mix, kappa = scheme
    label_ess, distill_ess = [], []
    for start in range(0, entropy.numel() - batch + 1, batch):
        h = entropy[start : start + batch]  # (B,)
        w = label_weights(h, label_scheme, gamma, mix)  # (B,)
        r = distill_weights(h, w, distill_scheme, kappa)  # (B,)
        label_ess.append(effective_sample_size(w).item())
        distill_ess.append(effective_sample_size(r).item())
    return statistics.mean(label_ess), statistics.mean(distill_ess)


def measure(logits: torch.Tensor, batch: int, norms: list[str], temperatures: list[float]) -> list[dict]:
    order = torch.randperm(logits.shape[0], generator=torch.Generator().manual_seed(0))
    logits = logits[order].double()  # (A, K)
    rows = []
    for norm in norms:
        teacher = normalise_teacher(logits, norm)  # (A, K)
        top_is_positive = (teacher.argmax(dim=1) == 0).double().mean().item()
        for temperature in temperatures:
            entropy = teacher_entropy(teacher, temperature)  # (A,)
            for name, scheme in WEIGHTINGS.items():
                label_ess, distill_ess = batch_ess(entropy, batch, scheme)
                rows.append(
                    {
                        "teacher_norm": norm,
                        "weight_temperature": temperature,
                        "weighting": name,
                        "entropy_mean": entropy.mean().item(),
                        "entropy_std": entropy.std().item(),
                        "label_ess": label_ess,
                        "distill_ess": distill_ess,
                        "positive_first": top_is_positive,
                    }
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--teacher-cache", type=Path, required=True, help="one cache folder (holds round-*.safetensors)"
    )
    parser.add_argument("--batch", type=int, default=64, help="anchors per batch, as the students train (B)")
    parser.add_argument(
        "--weight-temperatures", type=float, nargs="+", default=[1.0, 0.5, 0.25], help="T_w values to measure"
    )
    parser.add_argument(
        "--norms",
        nargs="+",
        default=list(TEACHER_NORMS),
        choices=TEACHER_NORMS,
        help="teacher_norm values",
    )
    parser.add_argument("--name", default="weight_ess", help="output file stem under --results")
    parser.add_argument(
        "--results", type=Path, default=Path("benchmarks/results"), help="folder for NAME.md and NAME.json"
    )
    args = parser.parse_args()
    files = sorted(args.teacher_cache.glob("round-*.safetensors"))
    if not files:
        parser.error(f"{args.teacher_cache}: no round-*.safetensors files (is it one cache folder?)")
    logits = torch.cat([round_logits(f) for f in files])  # (A, K), every direction
    rows = measure(logits, args.batch, args.norms, args.weight_temperatures)
    command = "python benchmarks/weight_ess.py " + " ".join(
        [f"--teacher-cache {args.teacher_cache}", f"--batch {args.batch}", f"--name {args.name}"]
    )
    lines = [
        f"# Per-sample weights on the teacher's lists ({args.name})",
        "",
        f"    {command}",
        "",
        f"{logits.shape[0]:,} lists of K = {logits.shape[1]} from {', '.join(f.name for f in files)}; batches of "
        f"B = {args.batch} (ESS = {args.batch} is uniform). The teacher ranks the positive first on "
        f"{100 * rows[0]['positive_first']:.1f}% of the lists.",
        "",
        "| teacher logits | T_w | weighting | H mean ± std (nats) | label ESS | distill ESS |",
        "|---|---:|---|---:|---:|---:|",
    ]
    lines += [
        f"| {r['teacher_norm']} | {r['weight_temperature']:g} | {r['weighting']} | "
        f"{r['entropy_mean']:.4f} ± {r['entropy_std']:.4f} | {r['label_ess']:.1f} | {r['distill_ess']:.1f} |"
        for r in rows
    ]
    args.results.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.results / f"{args.name}.md", "\n".join(lines) + "\n")
    write_json_atomic(args.results / f"{args.name}.json", {"command": command, "rows": rows})
    print("\n".join(lines))


if __name__ == "__main__":
    main()
