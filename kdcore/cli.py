"""`kdcore train ...`: train a student (optionally distilled from a teacher) from the shell.

Prints the epoch lines, then the final metrics as ONE JSON line on stdout (rank 0 only).
Runs unchanged under `torchrun --nproc_per_node N -m kdcore train ...`: with WORLD_SIZE > 1 the
process group is initialised from the environment (gloo on CPU, nccl on CUDA, the CUDA device
from LOCAL_RANK) and destroyed at the end. Bad input (a bad flag, kdcore's ConfigError,
DataNotFoundError, CheckpointError, an unwritable path) prints one `error:` line to stderr and exits 2;
a diverged loss exits 1; Ctrl-C exits 130.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

from .errors import ConfigError, KDError, NonFiniteLossError


def _weights(text: str) -> dict[str, float]:
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected TERM=VALUE[,TERM=VALUE...], got {item!r}")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"weight of {name!r} must be a number, got {value!r}") from None
    return out


class Parser(argparse.ArgumentParser):
    """argparse with errors as one `error:` line (no usage block): the same shape as every other kdcore error."""

    def error(self, message: str):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Each flag's default after its help (unless unset or already said); description and epilog keep their lines."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, False, [], argparse.SUPPRESS) and "default" not in text:
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    from .data import DATASETS
    from .distill import METHODS
    from .models import list_models
    from .config import OPTIMIZERS, SCHEDULES

    methods = ", ".join(["baseline", *sorted(METHODS)])
    epilog = (f"teachers: {', '.join(list_models('teacher'))}\nstudents: {', '.join(list_models('student'))}\n"
              f"methods:  {methods}; combine with + (kd+at), at:shifted pairs teacher block N with student block N-1")
    p = Parser(prog="kdcore train", description=__doc__.split("\n\n")[0].split(": ", 1)[1], epilog=epilog,
               formatter_class=HelpFormatter)
    d = p.add_argument_group("data")
    d.add_argument("--dataset", required=True, help=f"one of {', '.join(DATASETS)}")
    d.add_argument("--data-root", default=None, help="data folder (default: $KDCORE_DATA, else ../shared/data beside the repository)")
    d.add_argument("--train-limit", type=int, default=None, help="class-balanced subset of the training split")
    d.add_argument("--val-limit", type=int, default=None, help="class-balanced subset of the validation split")
    d.add_argument("--test-limit", type=int, default=None, help="class-balanced subset of the test split")
    d.add_argument("--val-fraction", type=float, default=0.1, help="share of train held out for validation (cifar10, imagefolder)")
    d.add_argument("--image-size", type=int, default=None, help="resize images to SIZE x SIZE (default: as stored)")
    d.add_argument("--channels", type=int, default=None, help="1 (gray) or 3 (RGB) (default: as stored)")
    d.add_argument("--no-download", action="store_true", help="never try to download a missing dataset")
    d.add_argument("--synthetic-size", type=int, default=2000, help="synthetic: training images (val/test: a quarter)")
    d.add_argument("--synthetic-classes", type=int, default=10, help="synthetic: number of classes")
    m = p.add_argument_group("models and method")
    m.add_argument("--student", required=True, help="a model name (below)")
    m.add_argument("--teacher", default=None, help="a model name (below); needed by every method but baseline")
    m.add_argument("--teacher-checkpoint", default=None, help="trained teacher weights (e.g. runs/teacher/best.pt)")
    m.add_argument("--teacher-pretrained", action="store_true", help="published ImageNet weights (torchvision/timm teachers)")
    m.add_argument("--method", default="baseline", help=f"one of {methods}, or a sum like kd+at")
    m.add_argument("--alpha", type=float, default=0.9, help="kd: weight of the KD term, (1 - alpha) for cross-entropy")
    m.add_argument("--temperature", type=float, default=4.0, help="kd, dkd: softmax temperature T")
    m.add_argument("--weights", type=_weights, default=None, help="term weights, e.g. at=500,ce=1")
    m.add_argument("--pairing", default="resolution", choices=("resolution", "shifted"),
                   help="feature pairs: stage outputs of equal resolution, or teacher block N -> student block N-1")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=10, help="training epochs")
    t.add_argument("--batch-size", type=int, default=128, help="per process under torchrun")
    t.add_argument("--lr", type=float, default=0.05, help="peak learning rate")
    t.add_argument("--optimizer", default="sgd", help=f"one of {', '.join(OPTIMIZERS)}")
    t.add_argument("--schedule", default="cosine", help=f"one of {', '.join(SCHEDULES)}")
    t.add_argument("--weight-decay", type=float, default=5e-4, help="L2 weight decay")
    t.add_argument("--warmup-epochs", type=float, default=0.0, help="linear warm-up (fractions allowed)")
    t.add_argument("--early-stopping", type=int, default=None, help="stop after N epochs without a better validation accuracy")
    t.add_argument("--no-augment", action="store_true", help="no random crop + flip")
    t.add_argument("--max-steps-per-epoch", type=int, default=None, help="cap on steps per epoch (quick checks)")
    t.add_argument("--teacher-cache", action="store_true", help="cache the teacher's logits per augmented view (exact)")
    t.add_argument("--teacher-cache-dir", default=None,
                   help="keep that cache in this folder too (implies --teacher-cache): later runs with the same teacher "
                        "and data split (--split-seed), in any process, skip the teacher for every view already seen")
    t.add_argument("--seed", type=int, default=0, help="seeds initialisation, batch order and augmentation")
    t.add_argument("--split-seed", type=int, default=None,
                   help="seeds the train/val split (default: --seed). The notebooks split with seed 0 for every run "
                        "seed, so pass 0 to pair with their runs and share their teacher cache")
    t.add_argument("--deterministic", action="store_true", help="deterministic kernels (torch.use_deterministic_algorithms)")
    t.add_argument("--device", default="auto", help="auto, cpu, cuda (under torchrun: cuda:LOCAL_RANK)")
    t.add_argument("--out-dir", default=None, help="writes best.pt, last.pt, history.csv; a rerun resumes from last.pt")
    t.add_argument("--no-resume", action="store_true", help="ignore an existing last.pt (it is overwritten)")
    t.add_argument("--progress", action="store_true", help="progress bars instead of one line per epoch")
    return p


def _init_distributed(device: str) -> tuple[str, bool]:
    """Initialise the process group from torchrun's environment; returns (device, initialised)."""
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device, False
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if not torch.cuda.is_available():
            raise ConfigError(f"device={device!r} but CUDA is not available here; use --device cpu.")
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return device, True


def _state_hash(module) -> str:
    h = hashlib.sha1()
    for k, v in module.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _terms(distiller) -> dict:
    """Each loss term's weight and its own options (dkd: alpha, beta, T, warmup; None = the term's default rule):
    what the run optimised, whichever command-line flags reached which term."""
    skip = {"name", "weight", "pairs", "paper", "code", "layers", "training"}
    return {t.name: {"weight": t.weight, **{k: v for k, v in vars(t).items() if not k.startswith("_") and k not in skip
                                             and isinstance(v, (int, float, str, bool, type(None)))}} for t in distiller.terms}


def _check_teacher_args(args: argparse.Namespace) -> None:
    """Refuse a teacher-less KD method, a checkpoint without its architecture, and an untrained teacher."""
    from .distill import parse_method

    if parse_method(args.method) and not args.teacher:  # (an unknown method name is refused first)
        raise ConfigError(f"--method {args.method} distils from a teacher: pass --teacher NAME with --teacher-checkpoint "
                          f"PATH or --teacher-pretrained, or use --method baseline.")
    if args.teacher_checkpoint and not args.teacher:
        raise ConfigError("--teacher-checkpoint needs --teacher NAME (the architecture the weights belong to).")
    if args.method.strip().lower() != "baseline" and args.teacher and not (args.teacher_checkpoint or args.teacher_pretrained):
        raise ConfigError(f"method {args.method!r} would distil from an untrained {args.teacher!r}; pass "
                          f"--teacher-checkpoint PATH (e.g. runs/teacher/best.pt) or --teacher-pretrained.")


def _load_data(args: argparse.Namespace, split_seed: int):
    from .data import load_dataset

    synthetic = None
    if args.dataset.lower() == "synthetic":
        quarter = max(args.synthetic_size // 4, args.synthetic_classes)
        synthetic = dict(num_classes=args.synthetic_classes, train_size=args.synthetic_size, val_size=quarter, test_size=quarter)
    return load_dataset(args.dataset, args.data_root, val_fraction=args.val_fraction, seed=split_seed,
                        image_size=args.image_size, channels=args.channels, train_limit=args.train_limit,
                        val_limit=args.val_limit, test_limit=args.test_limit, download=not args.no_download,
                        synthetic=synthetic)


def run(args: argparse.Namespace) -> dict:
    import torch
    import torch.distributed as dist

    from .distill import make_distiller
    from .evaluate import evaluate
    from .models import create_model
    from .provenance import git_commit
    from .runtime import cpu_features, distributed_world
    from .train import TrainConfig, fit

    commit = git_commit()  # the code this run starts with
    _check_teacher_args(args)
    split_seed = args.seed if args.split_seed is None else args.split_seed
    data = _load_data(args, split_seed)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
                      schedule=args.schedule, weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs,
                      early_stopping=args.early_stopping, augment=not args.no_augment,
                      max_steps_per_epoch=args.max_steps_per_epoch, teacher_cache=args.teacher_cache,
                      teacher_cache_dir=args.teacher_cache_dir, seed=args.seed,
                      deterministic=args.deterministic, device=args.device, progress=args.progress).validate()
    torch.manual_seed(args.seed)  # model initialisation
    student = create_model(args.student, num_classes=data.num_classes, in_channels=data.in_channels)
    teacher = None
    if args.teacher:
        pretrained = args.teacher_checkpoint or bool(args.teacher_pretrained)
        teacher = create_model(args.teacher, num_classes=data.num_classes, in_channels=data.in_channels, pretrained=pretrained)
    distiller = make_distiller(args.method, student, teacher, alpha=args.alpha, temperature=args.temperature,
                               weights=args.weights, pairing=args.pairing)
    result = fit(distiller, data, cfg, out_dir=args.out_dir, resume=not args.no_resume)
    rank, world = distributed_world()
    test = evaluate(student, data, "test", device=result.device)
    last = result.history.iloc[-1] if len(result.history) else None
    summary = {"dataset": data.name, "student": args.student, "teacher": args.teacher,
               "teacher_checkpoint": args.teacher_checkpoint, "method": args.method, "seed": args.seed,
               "split_seed": split_seed,
               "terms": _terms(distiller), "teacher_cache": result.teacher_cache,
               "epochs_run": int(len(result.history)), "best_epoch": result.best_epoch,
               "best_val_acc": result.best_val_acc,
               "final_val_acc": float(last["val_acc"]) if last is not None else None,
               "test_acc": test["accuracy"], "test_f1": test["f1_macro"],
               "resumed_from": result.resumed_from, "world_size": world, "device": result.device,
               "precision": result.precision, "channels_last": result.channels_last, "cpu": cpu_features(), "commit": commit,
               "seconds": round(result.seconds, 3), "out_dir": str(result.out_dir) if result.out_dir else None}
    hashes = [_state_hash(student)]
    if world > 1:
        gathered: list = [None] * world
        dist.all_gather_object(gathered, hashes[0])
        hashes = gathered
    summary["weights_sha1"] = hashes  # one per rank: all equal when the ranks stayed in sync
    return summary


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    initialised = False
    try:
        args.device, initialised = _init_distributed(args.device)
        summary = run(args)
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0:
            print(json.dumps(summary), flush=True)
        if initialised:
            # Tear down together: a rank that destroys gloo while its peer is still finishing the last
            # collective makes the peer abort ("terminate called without an active exception").
            dist.barrier()
        return 0
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 1
    except (KDError, OSError) as err:  # bad input or an unwritable path: one clear line, no traceback
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        return 130
    finally:
        if initialised:
            import torch.distributed as dist

            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
